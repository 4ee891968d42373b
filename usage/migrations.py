"""Versioned schema migrations, one numbered step at a time, per backend.

Each store keeps the applied versions in ``usage_schema_migrations`` and,
when it opens, applies the steps it lacks in order, each in the same
transaction as its bookkeeping row, under a lock that serialises concurrent
openers (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock). A
database that has a version this code does not know raises
:class:`~.store.SchemaTooNew`. Steps are only ever appended: an applied step
is never edited.
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

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "usage records",
        sqlite=(
            f"""
            CREATE TABLE usage_records (
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
                outcome TEXT NOT NULL CHECK (outcome IN ({_OUTCOMES})),
                partial INTEGER NOT NULL CHECK (partial IN (0, 1))
            )
            """,
            # Covering index for the per-request quota check.
            """
            CREATE INDEX usage_by_user_time ON usage_records
                (uid, started_at, outcome, prompt_tokens, completion_tokens)
            """,
            "CREATE INDEX usage_by_time ON usage_records (started_at)",
        ),
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
)


def check_known(applied: int, migrations: tuple[Migration, ...]) -> None:
    from .store import SchemaTooNew

    known = migrations[-1].version if migrations else 0
    if applied > known:
        raise SchemaTooNew(
            f"the usage database is at schema version {applied}, newer than this "
            f"fognode knows ({known}); upgrade fognode or point it at another database"
        )
