"""The usage store, the batch writer and the ledger on a real PostgreSQL server:
every test of tests/unit/test_usage_store.py that takes `make_store` (there
it opens SQLite stores, here PostgreSQL ones), and what only PostgreSQL has."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator

import asyncpg
import pytest

from fognode.usage.backends import open_store
from fognode.usage.options import StoreOptions
from fognode.usage.postgres_store import PostgresStore
from tests.support.postgres import PostgresServer
from tests.support.usage import StoreFactory, stores
from tests.unit import test_usage_store as on_sqlite

# Every test of the SQLite module that takes `make_store` is collected here
# too, so a test added there runs on both backends without a list to keep.
globals().update(
    {
        name: test
        for name, test in vars(on_sqlite).items()
        if name.startswith("test_") and "make_store" in inspect.signature(test).parameters
    }
)


@pytest.fixture(params=["postgres"])
async def make_store(
    postgres_server: PostgresServer,
) -> AsyncIterator[StoreFactory]:
    """Opens stores on one fresh database (each call is another connection,
    as another node or process would have)."""
    url = await postgres_server.new_database()
    async with stores(lambda migrations: PostgresStore(url, migrations=migrations)) as factory:
        yield factory


async def test_postgres_quota_query_uses_the_index(postgres_url: str) -> None:
    store = open_store(StoreOptions(database_url=postgres_url))
    assert isinstance(store, PostgresStore)
    await store.open()
    await store.close()
    from fognode.usage.postgres_store import _USER_WINDOW

    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("SET enable_seqscan = off")  # an empty table is scanned otherwise
        rows = await conn.fetch("EXPLAIN " + _USER_WINDOW, "a", 0.0, 0.0, 0)
        plan = " ".join(row[0] for row in rows)
    finally:
        await conn.close()
    assert "usage_by_user_time" in plan
    assert "usage_minutes_pkey" in plan
