"""The embedded store: one SQLite file in the node's data directory.

WAL mode, so the quota reads never wait for a batch being written, and a
``kill -9`` can lose at most the transaction in progress: a batch is one
transaction, and ``synchronous=FULL`` makes a committed batch survive even
a power cut. aiosqlite runs each connection on a thread of its own, so the
event loop never blocks on the file. Two connections: one writes (batches,
migrations), one reads (quota checks, totals).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import aiosqlite

from .migrations import MIGRATIONS, Migration, check_known
from .record import COLUMNS, Outcome, UsageRecord
from .store import Grouping, Total, UserWindow, first_whole_minute, total_from_row, totals_query

_INSERT = (
    f"INSERT OR IGNORE INTO usage_records ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(COLUMNS))})"
)

# Today's tokens from the per-minute sums (at most 1,440 rows), plus the
# records before the day's first whole minute (none for an HH:MM start);
# the sliding minute from the records themselves, which the covering index
# bounds to that minute's: Retry-After needs their exact times.
_USER_WINDOW = f"""
SELECT
    (SELECT COALESCE(SUM(tokens), 0) FROM usage_minutes
        WHERE uid = :uid AND minute >= :first_minute)
    + (SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage_records
        WHERE uid = :uid AND started_at >= :day AND started_at < :first_minute * 60),
    COUNT(*),
    MIN(started_at),
    MAX(started_at)
FROM usage_records
WHERE uid = :uid AND started_at >= :minute AND outcome != '{Outcome.REJECTED}'
"""


class SqliteStore:
    def __init__(self, path: Path, *, migrations: tuple[Migration, ...] = MIGRATIONS) -> None:
        self.path = path
        self._migrations = migrations
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None

    async def open(self) -> None:
        await asyncio.to_thread(_create_private, self.path)
        # isolation_level=None: transactions are begun and ended explicitly.
        writer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await writer.execute("PRAGMA busy_timeout = 10000")
            await _write_ahead_log(writer)
            await writer.execute("PRAGMA synchronous = FULL")
            await self._migrate(writer)
        except BaseException:
            await writer.close()
            raise
        reader = await aiosqlite.connect(self.path, isolation_level=None)
        await reader.execute("PRAGMA busy_timeout = 10000")
        await reader.execute("PRAGMA query_only = ON")
        self._writer, self._reader = writer, reader

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock first, so two processes opening
        # the same new file do not both create the tables.
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(
                "CREATE TABLE IF NOT EXISTS usage_schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            async with db.execute("SELECT MAX(version) FROM usage_schema_migrations") as cur:
                row = await cur.fetchone()
            applied = int(row[0]) if row and row[0] is not None else 0
            check_known(applied, self._migrations)
            for step in self._migrations:
                if step.version <= applied:
                    continue
                for statement in step.sqlite:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO usage_schema_migrations VALUES (?, ?, ?)",
                    (step.version, step.name, time.time()),
                )
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise

    async def close(self) -> None:
        for db in (self._reader, self._writer):
            if db is not None:
                await db.close()
        self._reader = self._writer = None

    def _db(self, *, write: bool) -> aiosqlite.Connection:
        db = self._writer if write else self._reader
        if db is None:
            raise RuntimeError("the usage store is not open")
        return db

    async def schema_version(self) -> int:
        async with self._db(write=False).execute(
            "SELECT MAX(version) FROM usage_schema_migrations"
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def write(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        db = self._db(write=True)
        rows = [r.row() for r in records]
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.executemany(_INSERT, rows)
            await db.execute("COMMIT")
        except BaseException:
            await _rollback(db)
            raise

    async def user_window(self, uid: str, *, day_start: float, minute_start: float) -> UserWindow:
        params = {
            "uid": uid,
            "day": day_start,
            "first_minute": first_whole_minute(day_start),
            "minute": minute_start,
        }
        async with self._db(write=False).execute(_USER_WINDOW, params) as cur:
            row = await cur.fetchone()
        assert row is not None
        return UserWindow(int(row[0]), int(row[1]), row[2], row[3])

    async def totals(
        self, *, since: float, until: float, by: Grouping, uid: str | None = None
    ) -> list[Total]:
        query = totals_query(by, with_uid=uid is not None, time=lambda _: "?", param=lambda _: "?")
        params = [since, until] if uid is None else [since, until, uid]
        async with self._db(write=False).execute(query, params) as cur:
            rows = await cur.fetchall()
        return [total_from_row(by, tuple(row)) for row in rows]

    async def integrity_check(self) -> str:
        """SQLite's own check of the file ("ok" when sound)."""
        async with self._db(write=False).execute("PRAGMA integrity_check") as cur:
            rows = await cur.fetchall()
        return "\n".join(str(row[0]) for row in rows)


BUSY_SECONDS = 10.0  # as busy_timeout


async def _write_ahead_log(db: aiosqlite.Connection) -> None:
    """Switch the file to WAL. Switching needs the file to itself for a
    moment, and SQLite answers another process switching it at the same time
    "database is locked" at once, without waiting for busy_timeout (two nodes
    or `fognode usage` opening a new file together): so wait here."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + BUSY_SECONDS
    while True:
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or loop.time() > give_up:
                raise
        await asyncio.sleep(0.02)


def _create_private(path: Path) -> None:
    """The file says who used the node when: readable by its owner only.
    SQLite gives the -wal and -shm files the database file's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)


async def _rollback(db: aiosqlite.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # a failed statement may have ended it
        await db.execute("ROLLBACK")
