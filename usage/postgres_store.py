"""The shared store: PostgreSQL, for several fog nodes that share budgets.

Every node writes its records into the same table and every quota check sums
over all of them, so a user's budget is one budget however many nodes serve
them. Times are ``timestamptz``; the nodes' clocks stamp the records, so
they should agree (NTP). Migrations run under a transaction-scoped advisory
lock: nodes that start together apply each step once.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .migrations import MIGRATIONS, Migration, check_known
from .record import COLUMNS, Outcome, UsageRecord
from .store import Grouping, Total, UserWindow, first_whole_minute, total_from_row, totals_query

# pg_advisory_xact_lock key: "fognode usage" folded into a bigint.
_LOCK_KEY = 0x666F67_7573616765

# One statement per batch, so the statement trigger of migration 2 adds the
# batch's inserted rows to usage_minutes in one grouped upsert.
_ARRAY_TYPES = (
    "text", "text", "text", "text", "text", "text", "text",
    "float8", "float8", "bigint", "bigint", "text", "boolean", "text",
)  # fmt: skip
_INSERT = f"""
INSERT INTO usage_records ({", ".join(COLUMNS)})
SELECT record_id, request_id, node, uid, model, upstream, route,
    to_timestamp(started_at), to_timestamp(ended_at),
    prompt_tokens, completion_tokens, outcome, partial, served_by
FROM unnest({", ".join(f"${n}::{kind}[]" for n, kind in enumerate(_ARRAY_TYPES, 1))})
    AS batch ({", ".join(COLUMNS)})
ON CONFLICT (record_id) DO NOTHING
"""

# Today's tokens from the per-minute sums (at most 1,440 rows), plus the
# records before the day's first whole minute (none for an HH:MM start);
# the sliding minute from the records themselves (the index bounds it to
# that minute's), since Retry-After needs their exact times.
_USER_WINDOW = f"""
SELECT
    (SELECT COALESCE(SUM(tokens), 0) FROM usage_minutes WHERE uid = $1 AND minute >= $4)
    + (SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage_records
        WHERE uid = $1 AND started_at >= to_timestamp($2::float8)
            AND started_at < to_timestamp($4::bigint * 60)),
    COUNT(*),
    EXTRACT(EPOCH FROM MIN(started_at))::float8,
    EXTRACT(EPOCH FROM MAX(started_at))::float8
FROM usage_records
WHERE uid = $1 AND started_at >= to_timestamp($3::float8) AND outcome <> '{Outcome.REJECTED}'
"""


class PostgresStore:
    def __init__(
        self, url: str, *, migrations: tuple[Migration, ...] = MIGRATIONS, pool_size: int = 4
    ) -> None:
        self.url = url
        self._migrations = migrations
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self._pool_size)
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _migrate(self, conn: PoolConnectionProxy[asyncpg.Record]) -> None:
        async with conn.transaction():
            # Taken before anything is created: concurrent CREATE TABLE IF NOT
            # EXISTS can still collide in PostgreSQL's catalog.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS usage_schema_migrations ("
                "version integer PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = await conn.fetchval(
                "SELECT COALESCE(MAX(version), 0) FROM usage_schema_migrations"
            )
            check_known(int(applied), self._migrations)
            for step in self._migrations:
                if step.version <= applied:
                    continue
                for statement in step.postgres:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO usage_schema_migrations (version, name) VALUES ($1, $2)",
                    step.version,
                    step.name,
                )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the usage store is not open")
        return self._pool

    async def schema_version(self) -> int:
        value = await self._db().fetchval(
            "SELECT COALESCE(MAX(version), 0) FROM usage_schema_migrations"
        )
        return int(value)

    async def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        columns = [list(column) for column in zip(*(r.row() for r in records), strict=True)]
        await self._db().execute(_INSERT, *columns)

    async def user_window(self, uid: str, *, day_start: float, minute_start: float) -> UserWindow:
        row = await self._db().fetchrow(
            _USER_WINDOW, uid, day_start, minute_start, first_whole_minute(day_start)
        )
        assert row is not None
        return UserWindow(int(row[0]), int(row[1]), row[2], row[3])

    async def totals(
        self, *, since: float, until: float, by: Grouping, uid: str | None = None
    ) -> list[Total]:
        query = totals_query(
            by,
            with_uid=uid is not None,
            time=lambda n: f"to_timestamp(${n}::float8)",
            param=lambda n: f"${n}",
        )
        params = [since, until] if uid is None else [since, until, uid]
        rows = await self._db().fetch(query, *params)
        return [total_from_row(by, tuple(row)) for row in rows]
