"""The usage store, the batch writer and the ledger on a real PostgreSQL server:
the tests of tests/unit/test_usage_store.py (which run them on SQLite), with
`make_store` opening PostgreSQL stores, and what only PostgreSQL has."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from fognode.usage.backends import open_store
from fognode.usage.options import StoreOptions
from fognode.usage.postgres_store import PostgresStore
from tests.support.postgres import PostgresServer
from tests.support.usage import StoreFactory, stores
from tests.unit.test_usage_store import (  # noqa: F401 (the same tests, collected here too)
    test_a_batch_written_twice_counts_once,
    test_a_day_that_starts_off_midnight_and_off_the_minute,
    test_a_failed_write_is_retried_and_counts_meanwhile,
    test_a_full_buffer_drops_and_counts,
    test_a_new_step_is_applied_to_an_existing_database,
    test_a_retry_after_a_commit_whose_answer_was_lost_counts_once,
    test_concurrent_openers_apply_each_step_once,
    test_concurrent_requests_cannot_overshoot_the_daily_budget,
    test_migrating_a_version_1_database_fills_the_minute_sums,
    test_minute_sums_follow_every_batch_and_a_retried_one_adds_nothing,
    test_nodes_sharing_a_database_see_one_budget,
    test_nodes_writing_at_once_add_up_exactly,
    test_open_migrates_once_and_reopening_changes_nothing,
    test_requests_per_minute_over_a_sliding_window,
    test_the_quota_window,
    test_the_writer_flushes_after_t_seconds,
    test_the_writer_flushes_every_n_records,
    test_totals_per_user_per_model_and_both,
    test_unlimited_users_skip_the_store,
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
