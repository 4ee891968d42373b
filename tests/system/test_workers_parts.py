"""Processes that open a new usage store at once migrate it once."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

from fognode.usage.migrations import MIGRATIONS

OPEN_STORE = """
import asyncio, sys
from pathlib import Path
from fognode.usage.sqlite_store import SqliteStore

async def main():
    store = SqliteStore(Path(sys.argv[1]))
    await store.open()
    await store.close()

asyncio.run(main())
"""


async def test_processes_opening_a_new_usage_store_at_once_migrate_it_once(
    tmp_path: Path,
) -> None:
    """What workers restarting, or nodes sharing a file, do: each step applied
    exactly once however the openers interleave (BEGIN IMMEDIATE)."""
    path = tmp_path / "usage.sqlite3"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", OPEN_STORE, str(path), stderr=asyncio.subprocess.PIPE
        )
        for _ in range(6)
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    assert [p.returncode for p in procs] == [0] * 6, [err.decode() for _, err in results]
    with sqlite3.connect(path) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM usage_schema_migrations")]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert versions == [m.version for m in MIGRATIONS]
    assert {"usage_records", "usage_minutes"} <= tables
