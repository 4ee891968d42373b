"""Versioned schema migrations, one numbered step at a time, per backend.

Each store keeps the applied versions in ``usage_schema_migrations`` and,
when it opens, applies the steps it lacks in order, each in the same
transaction as its bookkeeping row, under a lock that serialises concurrent
openers (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock). A
database that has a version this code does not know raises
:class:`SchemaTooNew`. Steps are only ever appended: an applied step
is never edited.

Step 3 lets ``outcome`` say ``model_not_found``: a request for a model the
node does not have is neither the upstream's failure nor the gateway's
refusal.

Step 4 adds ``served_by``: the node whose upstream answered, which differs
from ``node`` (the entry node, which records) when a member of the fog
served the request.

Step 2 keeps ``usage_minutes``: each user's tokens per minute of
``started_at``, added to by a trigger in the transaction that inserts the
records, so the per-request quota check sums at most 1,440 rows for a day
however many requests the user made (see :func:`~.store.first_whole_minute`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


_OUTCOMES = "'completed', 'client_disconnected', 'upstream_failed', 'rejected'"
# Step 3 adds the outcome of a request for a model the node does not have.
_OUTCOMES_3 = _OUTCOMES + ", 'model_not_found'"


def _sqlite_records(name: str, outcomes: str) -> str:
    """The records table in SQLite (step 1; step 3 builds it anew with more outcomes)."""
    return f"""
            CREATE TABLE {name} (
                record_id TEXT PRIMARY KEY,
                request_id TEXT NOT NULL,
                node TEXT NOT NULL,
                uid TEXT NOT NULL,
                model TEXT NOT NULL,
                upstream TEXT NOT NULL,
                route TEXT NOT NULL,
                started_at REAL NOT NULL,
                ended_at REAL NOT NULL,
                prompt_tokens INTEGER NOT NULL CHECK (prompt_tokens >= 0),
                completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),
                outcome TEXT NOT NULL CHECK (outcome IN ({outcomes})),
                partial INTEGER NOT NULL CHECK (partial IN (0, 1))
            )
            """


_SQLITE_RECORD_INDEXES = (
    # Covering index for the per-request quota check.
    """
            CREATE INDEX usage_by_user_time ON usage_records
                (uid, started_at, outcome, prompt_tokens, completion_tokens)
            """,
    "CREATE INDEX usage_by_time ON usage_records (started_at)",
)

# The minute bucket of a record, floor(started_at / 60), as
# :func:`~.store.first_whole_minute` counts minutes (times are positive, so
# truncation is flooring; integer division keeps it exact at the boundaries).
# Step 2 is written with them: never edit them.
_SQLITE_MINUTE = "CAST({} AS INTEGER) / 60"
_POSTGRES_MINUTE = "floor(extract(epoch FROM {}))::bigint / 60"
_TOKENS = "prompt_tokens + completion_tokens"

# Fires only for rows actually inserted: a record skipped by INSERT OR IGNORE
# (a retried batch) adds nothing. Step 2 makes it; step 3 makes it again.
_SQLITE_MINUTES_TRIGGER = f"""
            CREATE TRIGGER usage_minutes_add AFTER INSERT ON usage_records BEGIN
                INSERT INTO usage_minutes (uid, minute, tokens)
                VALUES (
                    NEW.uid, {_SQLITE_MINUTE.format("NEW.started_at")},
                    NEW.prompt_tokens + NEW.completion_tokens
                )
                ON CONFLICT (uid, minute) DO UPDATE SET tokens = tokens + excluded.tokens;
            END
            """

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "usage records",
        sqlite=(_sqlite_records("usage_records", _OUTCOMES), *_SQLITE_RECORD_INDEXES),
        postgres=(
            f"""
            CREATE TABLE usage_records (
                record_id text PRIMARY KEY,
                request_id text NOT NULL,
                node text NOT NULL,
                uid text NOT NULL,
                model text NOT NULL,
                upstream text NOT NULL,
                route text NOT NULL,
                started_at timestamptz NOT NULL,
                ended_at timestamptz NOT NULL,
                prompt_tokens bigint NOT NULL CHECK (prompt_tokens >= 0),
                completion_tokens bigint NOT NULL CHECK (completion_tokens >= 0),
                outcome text NOT NULL CHECK (outcome IN ({_OUTCOMES})),
                partial boolean NOT NULL
            )
            """,
            """
            CREATE INDEX usage_by_user_time ON usage_records (uid, started_at)
                INCLUDE (outcome, prompt_tokens, completion_tokens)
            """,
            "CREATE INDEX usage_by_time ON usage_records (started_at)",
        ),
    ),
    Migration(
        2,
        "tokens per user and minute",
        sqlite=(
            """
            CREATE TABLE usage_minutes (
                uid TEXT NOT NULL,
                minute INTEGER NOT NULL,
                tokens INTEGER NOT NULL,
                PRIMARY KEY (uid, minute)
            ) WITHOUT ROWID
            """,
            f"""
            INSERT INTO usage_minutes (uid, minute, tokens)
            SELECT uid, {_SQLITE_MINUTE.format("started_at")}, SUM({_TOKENS})
            FROM usage_records GROUP BY 1, 2
            """,
            _SQLITE_MINUTES_TRIGGER,
        ),
        postgres=(
            # Other nodes may be writing (an older fognode in a rolling
            # upgrade): hold their inserts until the trigger exists, so each
            # record is in the backfill or passes through the trigger.
            "LOCK TABLE usage_records IN SHARE MODE",
            """
            CREATE TABLE usage_minutes (
                uid text NOT NULL,
                minute bigint NOT NULL,
                tokens bigint NOT NULL,
                PRIMARY KEY (uid, minute)
            )
            """,
            f"""
            INSERT INTO usage_minutes (uid, minute, tokens)
            SELECT uid, {_POSTGRES_MINUTE.format("started_at")}, SUM({_TOKENS})
            FROM usage_records GROUP BY 1, 2
            """,
            # One grouped upsert per statement from the rows it inserted (a
            # row skipped by ON CONFLICT DO NOTHING is not among them), in
            # key order so that concurrent batches lock rows in one order.
            f"""
            CREATE FUNCTION usage_minutes_add() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO usage_minutes AS m (uid, minute, tokens)
                SELECT uid, {_POSTGRES_MINUTE.format("started_at")}, SUM({_TOKENS})
                FROM inserted GROUP BY 1, 2 ORDER BY 1, 2
                ON CONFLICT (uid, minute) DO UPDATE SET tokens = m.tokens + excluded.tokens;
                RETURN NULL;
            END
            $$
            """,
            """
            CREATE TRIGGER usage_minutes_add AFTER INSERT ON usage_records
                REFERENCING NEW TABLE AS inserted
                FOR EACH STATEMENT EXECUTE FUNCTION usage_minutes_add()
            """,
        ),
    ),
    Migration(
        3,
        "an outcome for a model the node does not have",
        # SQLite cannot change a CHECK constraint: the table is built anew
        # (its indexes and the minutes trigger with it) and the rows copied.
        sqlite=(
            _sqlite_records("usage_records_3", _OUTCOMES_3),
            "INSERT INTO usage_records_3 SELECT * FROM usage_records",
            "DROP TABLE usage_records",
            "ALTER TABLE usage_records_3 RENAME TO usage_records",
            *_SQLITE_RECORD_INDEXES,
            _SQLITE_MINUTES_TRIGGER,
        ),
        postgres=(
            "ALTER TABLE usage_records DROP CONSTRAINT usage_records_outcome_check",
            f"""
            ALTER TABLE usage_records ADD CONSTRAINT usage_records_outcome_check
                CHECK (outcome IN ({_OUTCOMES_3}))
            """,
        ),
    ),
    Migration(
        4,
        "the node that served",
        # The fog: a node may hand a request to another member,
        # and records it itself; ``node`` stays the entry node. Records from
        # before the fog were all served where they entered.
        sqlite=(
            "ALTER TABLE usage_records ADD COLUMN served_by TEXT NOT NULL DEFAULT ''",
            "UPDATE usage_records SET served_by = node",
        ),
        postgres=(
            "ALTER TABLE usage_records ADD COLUMN served_by text NOT NULL DEFAULT ''",
            "UPDATE usage_records SET served_by = node",
        ),
    ),
)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer fognode; refuse rather than guess."""


def check_known(applied: int, migrations: tuple[Migration, ...]) -> None:
    known = migrations[-1].version if migrations else 0
    if applied > known:
        raise SchemaTooNew(
            f"the usage database is at schema version {applied}, newer than this "
            f"fognode knows ({known}); upgrade fognode or point it at another database"
        )
