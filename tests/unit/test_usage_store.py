"""The usage store, the batch writer and the ledger, on SQLite.

The same tests run on a real PostgreSQL server in
tests/system/test_usage_store.py (each test takes `make_store`, which opens
stores of one backend).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from fognode.usage.backends import open_store
from fognode.usage.ledger import UsageLedger
from fognode.usage.migrations import MIGRATIONS, Migration, SchemaTooNew
from fognode.usage.options import Limits, QuotaOptions, StoreOptions
from fognode.usage.postgres_store import PostgresStore
from fognode.usage.record import COLUMNS, Outcome, UsageRecord
from fognode.usage.sqlite_store import SqliteStore
from fognode.usage.store import Grouping, Total, UsageStore
from fognode.usage.writer import BatchWriter
from tests.support.clock import Clock
from tests.support.helpers import wait_until
from tests.support.usage import NOON, StoreFactory, rec, stores


@pytest.fixture(params=["sqlite"])
async def make_store(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores on one fresh SQLite file (each call is another connection,
    as another node or process would have)."""
    async with stores(
        lambda migrations: SqliteStore(tmp_path / "usage.sqlite3", migrations=migrations)
    ) as factory:
        yield factory


# --- schema ----------------------------------------------------------------------------


async def test_open_migrates_once_and_reopening_changes_nothing(make_store: StoreFactory) -> None:
    first = await make_store()
    assert await first.schema_version() == MIGRATIONS[-1].version
    await first.write([rec()])
    second = await make_store()
    assert await second.schema_version() == MIGRATIONS[-1].version
    totals = await second.totals(since=0, until=NOON + 10, by=Grouping.USER)
    assert [t.requests for t in totals] == [1]


async def test_concurrent_openers_apply_each_step_once(make_store: StoreFactory) -> None:
    stores = await asyncio.gather(*(make_store() for _ in range(6)))
    assert {await s.schema_version() for s in stores} == {MIGRATIONS[-1].version}


EXTRA = Migration(
    MIGRATIONS[-1].version + 1,
    "index by model",
    sqlite=("CREATE INDEX usage_by_model ON usage_records (model, started_at)",),
    postgres=("CREATE INDEX usage_by_model ON usage_records (model, started_at)",),
)


async def test_a_new_step_is_applied_to_an_existing_database(make_store: StoreFactory) -> None:
    old = await make_store()
    await old.write([rec()])
    new = await make_store((*MIGRATIONS, EXTRA))
    assert await new.schema_version() == EXTRA.version
    assert len(await new.totals(since=0, until=NOON + 10, by=Grouping.MODEL)) == 1
    # A fognode that does not know the new step refuses the database.
    with pytest.raises(SchemaTooNew, match="newer than this fognode knows"):
        await make_store()


# --- writing and totals ----------------------------------------------------------------


async def test_totals_per_user_per_model_and_both(make_store: StoreFactory) -> None:
    store = await make_store()
    await store.write(
        [
            rec("alice", model="a", prompt=1, completion=2),
            rec("alice", model="b", prompt=3, completion=4, partial=True),
            rec("bob", model="a", prompt=5, completion=6),
            rec("bob", model="a", prompt=0, completion=0, outcome=Outcome.REJECTED),
            rec("carol", model="a", at=NOON - 3600, prompt=100, completion=100),  # outside
        ]
    )
    since, until = NOON - 60, NOON + 60
    by_user = await store.totals(since=since, until=until, by=Grouping.USER)
    assert by_user == [
        Total("bob", None, requests=1, rejected=1, partial=0, prompt_tokens=5, completion_tokens=6),
        Total(
            "alice", None, requests=2, rejected=0, partial=1, prompt_tokens=4, completion_tokens=6
        ),
    ]
    by_model = await store.totals(since=since, until=until, by=Grouping.MODEL)
    assert [(t.model, t.requests, t.total_tokens) for t in by_model] == [("a", 2, 14), ("b", 1, 7)]
    both = await store.totals(since=since, until=until, by=Grouping.USER_MODEL, uid="alice")
    assert [(t.uid, t.model, t.total_tokens) for t in both] == [
        ("alice", "b", 7),
        ("alice", "a", 3),
    ]
    assert await store.totals(since=NOON + 60, until=NOON + 120, by=Grouping.USER) == []


async def test_a_batch_written_twice_counts_once(make_store: StoreFactory) -> None:
    store = await make_store()
    batch = [rec(), rec()]
    await store.write(batch)
    await store.write(batch)  # a retried flush whose first commit did land
    [total] = await store.totals(since=0, until=NOON + 10, by=Grouping.USER)
    assert (total.requests, total.total_tokens) == (2, 60)


async def test_the_quota_window(make_store: StoreFactory) -> None:
    store = await make_store()
    day_start = NOON - 12 * 3600
    await store.write(
        [
            rec(at=day_start - 1, prompt=1000),  # yesterday
            rec(at=day_start + 5, prompt=1, completion=1),
            rec(at=NOON - 61, prompt=1, completion=1),  # today, not in the last minute
            rec(at=NOON - 50, prompt=1, completion=1),
            rec(at=NOON - 10, prompt=1, completion=1, partial=True),
            rec(at=NOON - 5, prompt=0, completion=0, outcome=Outcome.REJECTED),
            rec("bob", at=NOON - 5, prompt=7, completion=7),
        ]
    )
    window = await store.user_window("alice", day_start=day_start, minute_start=NOON - 60)
    assert window.tokens_today == 8
    assert window.requests_last_minute == 2
    assert window.oldest_request == pytest.approx(NOON - 50)
    assert window.newest_request == pytest.approx(NOON - 10)
    # Just after the day boundary the minute window reaches into yesterday:
    # yesterday's requests count there, their tokens do not.
    await store.write([rec("dawn", at=day_start - 20, prompt=500), rec("dawn", at=day_start + 5)])
    early = await store.user_window("dawn", day_start=day_start, minute_start=day_start - 30)
    assert (early.tokens_today, early.requests_last_minute) == (30, 2)
    nobody = await store.user_window("nobody", day_start=day_start, minute_start=NOON - 60)
    assert (nobody.tokens_today, nobody.requests_last_minute, nobody.oldest_request) == (0, 0, None)


async def test_nodes_sharing_a_database_see_one_budget(make_store: StoreFactory) -> None:
    node_a, node_b = await make_store(), await make_store()
    await node_a.write([rec(node="node-a", prompt=1, completion=1)])
    await node_b.write([rec(node="node-b", prompt=2, completion=2)])
    for store in (node_a, node_b):
        window = await store.user_window("alice", day_start=NOON - 100, minute_start=NOON - 60)
        assert (window.tokens_today, window.requests_last_minute) == (6, 2)


# --- the batch writer ------------------------------------------------------------------


async def test_the_writer_flushes_every_n_records(make_store: StoreFactory) -> None:
    store = await make_store()
    flushed: list[int] = []
    options = StoreOptions(sqlite_path=Path("unused"), flush_records=5, flush_seconds=3600)
    writer = BatchWriter(store, options, on_flushed=lambda batch: flushed.append(len(batch)))
    writer.start()
    for _ in range(12):
        writer.add(rec())
    await wait_until(lambda: sum(flushed) >= 10, "two batches")
    assert flushed[:2] == [5, 5]
    assert len(writer.pending()) == 2  # the flush-interval has not passed for these
    await writer.close()
    assert sum(flushed) == 12 and writer.pending() == []
    [total] = await store.totals(since=0, until=NOON + 10, by=Grouping.USER)
    assert total.requests == 12


async def test_the_writer_flushes_after_t_seconds(make_store: StoreFactory) -> None:
    store = await make_store()
    options = StoreOptions(sqlite_path=Path("unused"), flush_records=100, flush_seconds=0.05)
    writer = BatchWriter(store, options)
    writer.start()
    writer.add(rec())
    await wait_until(lambda: writer.written == 1, "the timed flush")
    assert writer.batches == 1
    await writer.close()


class FailingFirst:
    """Fault injection around a real store: the first ``failures`` writes fail."""

    def __init__(self, store: UsageStore, failures: int) -> None:
        self.store = store
        self.failures = failures

    async def write(self, records: Sequence[UsageRecord]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database restarting")
        await self.store.write(records)

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


async def test_a_failed_write_is_retried_and_counts_meanwhile(make_store: StoreFactory) -> None:
    store = await make_store()
    flaky = FailingFirst(store, failures=1)
    options = StoreOptions(sqlite_path=Path("unused"), flush_records=1, flush_seconds=0.01)
    writer = BatchWriter(flaky, options)  # type: ignore[arg-type]
    ledger = UsageLedger(writer, QuotaOptions())
    writer.start()
    writer.add(rec(at=NOON))
    await wait_until(lambda: writer.failures == 1, "a failed write")
    assert len(writer.pending()) == 1
    usage = await ledger.usage("alice", now=NOON + 1)
    assert usage.tokens_today == 30  # not yet stored, still counted
    await wait_until(lambda: writer.written == 1, "the retry")
    usage = await ledger.usage("alice", now=NOON + 1)
    assert usage.tokens_today == 30  # stored now, and not counted twice
    await writer.close()


async def test_a_full_buffer_drops_and_counts(make_store: StoreFactory) -> None:
    store = await make_store()
    options = StoreOptions(sqlite_path=Path("unused"), flush_records=2, buffer_limit=3)
    writer = BatchWriter(store, options)  # not started: nothing drains the buffer
    for _ in range(5):
        writer.add(rec())
    assert (len(writer.pending()), writer.dropped) == (3, 2)
    await writer.flush()
    assert writer.pending() == [] and writer.written == 3


# --- the ledger --------------------------------------------------------------------------


async def test_concurrent_requests_cannot_overshoot_the_daily_budget(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    clock = Clock(NOON)
    writer = BatchWriter(store, StoreOptions(sqlite_path=Path("unused"), flush_seconds=0.01))
    ledger = UsageLedger(writer, QuotaOptions(), clock=clock)
    limits = Limits(tokens_per_day=1000)
    writer.start()
    tickets = await asyncio.gather(
        *(ledger.admit("alice", limits, estimate=100) for _ in range(30))
    )
    admitted = [t for t in tickets if t.decision.allowed]
    assert len(admitted) == 10  # 10 x 100 reserved fills the budget; 20 refused at once
    assert {t.decision.code for t in tickets if not t.decision.allowed} == {"insufficient_quota"}
    assert ledger.in_flight("alice") == 10
    # Each used only 60: settling frees the rest of the reservations.
    for ticket in admitted:
        ledger.settle(ticket, rec(at=clock.now, prompt=20, completion=40))
        ledger.settle(ticket, rec(at=clock.now))  # again: ignored
    assert ledger.in_flight("alice") == 0
    await writer.close()
    usage = await ledger.usage("alice")
    assert usage.tokens_today == 600
    more = await ledger.admit("alice", limits, estimate=100)
    assert more.decision.allowed
    assert more.decision.headers["x-ratelimit-remaining-tokens"] == "300"
    # Another user is not affected by alice's budget.
    assert (await ledger.admit("bob", limits, estimate=100)).decision.allowed


async def test_requests_per_minute_over_a_sliding_window(make_store: StoreFactory) -> None:
    store = await make_store()
    clock = Clock(NOON)
    writer = BatchWriter(store, StoreOptions(sqlite_path=Path("unused")))
    ledger = UsageLedger(writer, QuotaOptions(), clock=clock)
    limits = Limits(requests_per_minute=3)
    await store.write([rec(at=NOON - 50), rec(at=NOON - 20)])  # stored by an earlier run
    first = await ledger.admit("alice", limits, estimate=10)
    assert first.decision.allowed
    assert first.decision.headers["x-ratelimit-remaining-requests"] == "0"
    refused = await ledger.admit("alice", limits, estimate=10)
    assert refused.decision.code == "rate_limit_exceeded"
    assert refused.decision.headers["Retry-After"] == "10"  # the request of NOON-50 leaves
    ledger.record(rec(at=NOON, outcome=Outcome.REJECTED, prompt=0, completion=0))
    clock.now = NOON + 11
    assert (await ledger.admit("alice", limits, estimate=10)).decision.allowed
    await writer.flush()


async def test_unlimited_users_skip_the_store(make_store: StoreFactory) -> None:
    store = await make_store()
    await store.close()  # any query would fail now
    writer = BatchWriter(store, StoreOptions(sqlite_path=Path("unused")))
    ledger = UsageLedger(writer, QuotaOptions())
    ticket = await ledger.admit("alice", Limits(), estimate=10)
    assert ticket.decision.allowed and dict(ticket.decision.headers) == {}
    ledger.settle(ticket, rec())
    assert len(writer.pending()) == 1


# --- tokens per user and minute (migration 2) -----------------------------------------------


async def minute_sums(store: UsageStore) -> dict[tuple[str, int], int]:
    """usage_minutes as it is stored."""
    query = "SELECT uid, minute, tokens FROM usage_minutes"
    if isinstance(store, SqliteStore):
        async with store._db(write=False).execute(query) as cur:
            rows = [tuple(row) for row in await cur.fetchall()]
    else:
        assert isinstance(store, PostgresStore)
        rows = [tuple(row) for row in await store._db().fetch(query)]
    return {(str(uid), int(minute)): int(tokens) for uid, minute, tokens in rows}


async def record_sums(store: UsageStore) -> dict[tuple[str, int], int]:
    """The same sums computed from usage_records, minute by minute."""
    if isinstance(store, SqliteStore):
        query = "SELECT uid, started_at, prompt_tokens + completion_tokens FROM usage_records"
        async with store._db(write=False).execute(query) as cur:
            rows = [tuple(row) for row in await cur.fetchall()]
    else:
        assert isinstance(store, PostgresStore)
        query = (
            "SELECT uid, EXTRACT(EPOCH FROM started_at)::float8, "
            "prompt_tokens + completion_tokens FROM usage_records"
        )
        rows = [tuple(row) for row in await store._db().fetch(query)]
    sums: dict[tuple[str, int], int] = {}
    for uid, started_at, tokens in rows:
        key = (str(uid), math.floor(float(started_at)) // 60)
        sums[key] = sums.get(key, 0) + int(tokens)
    return sums


def expected_sums(records: Sequence[UsageRecord]) -> dict[tuple[str, int], int]:
    """What the distinct records add up to, per user and minute."""
    sums: dict[tuple[str, int], int] = {}
    for r in {r.record_id: r for r in records}.values():
        key = (r.uid, math.floor(r.started_at) // 60)
        sums[key] = sums.get(key, 0) + r.total_tokens
    return sums


async def test_minute_sums_follow_every_batch_and_a_retried_one_adds_nothing(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    minute = math.floor(NOON) // 60
    first = [
        rec(at=NOON, prompt=1, completion=2),
        rec(at=NOON + 59.999, prompt=3, completion=4),  # same minute, at its very end
        rec(at=NOON + 60, prompt=5, completion=6),  # the next one, at its very start
        rec("bob", at=NOON + 1, prompt=7, completion=8),
        rec(at=NOON + 2, prompt=0, completion=0, outcome=Outcome.REJECTED),
    ]
    await store.write(first)
    assert await minute_sums(store) == {
        ("alice", minute): 10,
        ("alice", minute + 1): 11,
        ("bob", minute): 15,
    }
    await store.write(first)  # a retried flush whose first commit did land
    second = [*first[:2], rec(at=NOON + 30, prompt=100, completion=0), rec("carol", at=NOON)]
    await store.write(second)  # partly written before
    await store.write([first[0], first[0]])  # one record twice in one batch
    assert await minute_sums(store) == expected_sums([*first, *second])
    assert await minute_sums(store) == await record_sums(store)
    window = await store.user_window("alice", day_start=NOON, minute_start=NOON + 30)
    assert window.tokens_today == 1 + 2 + 3 + 4 + 5 + 6 + 100


async def test_a_retry_after_a_commit_whose_answer_was_lost_counts_once(
    make_store: StoreFactory,
) -> None:
    store = await make_store()

    class LostAnswer:
        """Commits the first batch, then fails as a dropped connection would."""

        def __init__(self) -> None:
            self.lost = False

        async def write(self, records: Sequence[UsageRecord]) -> None:
            await store.write(records)
            if not self.lost:
                self.lost = True
                raise ConnectionResetError("connection lost after COMMIT")

        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

    options = StoreOptions(sqlite_path=Path("unused"), flush_records=3, flush_seconds=0.01)
    writer = BatchWriter(LostAnswer(), options)  # type: ignore[arg-type]
    writer.start()
    records = [rec(at=NOON + i, prompt=i, completion=1) for i in range(3)]
    for record in records:
        writer.add(record)
    await wait_until(lambda: writer.written == 3, "the retry")
    await writer.close()
    assert writer.failures == 1
    assert await minute_sums(store) == expected_sums(records) == await record_sums(store)
    window = await store.user_window("alice", day_start=NOON - 60, minute_start=NOON)
    assert (window.tokens_today, window.requests_last_minute) == (0 + 1 + 2 + 3, 3)


async def test_nodes_writing_at_once_add_up_exactly(make_store: StoreFactory) -> None:
    """Several nodes' batches for the same users and minutes, concurrently:
    every upsert of a minute row lands, none twice."""
    nodes = await asyncio.gather(*(make_store() for _ in range(4)))
    batches = [
        [
            rec(uid, at=NOON + (i * 7 + j) % 150, prompt=j, completion=n, node=f"node-{n}")
            for j, uid in enumerate(("alice", "bob", "carol") * 5)
        ]
        for n in range(4)
        for i in range(6)
    ]

    async def node_writes(n: int) -> None:  # one batch at a time, as its writer does
        for batch in batches[n::4]:
            await nodes[n].write(batch)
        for batch in batches[(n + 1) % 4 :: 12]:  # another node's batch again
            await nodes[n].write(batch)

    await asyncio.gather(*(node_writes(n) for n in range(4)))
    records = [r for batch in batches for r in batch]
    assert await minute_sums(nodes[0]) == expected_sums(records) == await record_sums(nodes[0])
    for node in nodes:
        window = await node.user_window("bob", day_start=NOON, minute_start=NOON + 90)
        assert window.tokens_today == sum(r.total_tokens for r in records if r.uid == "bob")


async def test_migrating_a_version_1_database_fills_the_minute_sums(
    make_store: StoreFactory,
) -> None:
    old = await make_store(MIGRATIONS[:1])
    assert await old.schema_version() == 1
    before = [
        rec(at=NOON - 86_400, prompt=1000),  # yesterday
        *(rec(at=NOON - 3600 + 7 * i, prompt=i, completion=2) for i in range(40)),
        rec("bob", at=NOON - 10, prompt=5, completion=5),
        rec(at=NOON - 5, prompt=0, completion=0, outcome=Outcome.REJECTED),
    ]
    await write_as_before_the_fog(old, before)
    new = await make_store()
    assert await new.schema_version() == MIGRATIONS[-1].version
    assert await minute_sums(new) == expected_sums(before) == await record_sums(new)
    after = [rec(at=NOON - 1, prompt=3, completion=3), rec("bob", at=NOON)]
    await new.write(after)
    assert await minute_sums(new) == expected_sums([*before, *after])
    window = await new.user_window("alice", day_start=NOON - 7200, minute_start=NOON - 60)
    assert window.tokens_today == sum(range(40)) + 40 * 2 + 6
    assert window.requests_last_minute == 1  # the rejected one is not a request


async def test_migrating_a_version_2_database_keeps_its_records_and_takes_model_not_found(
    make_store: StoreFactory,
) -> None:
    old = await make_store(MIGRATIONS[:2])
    before = [rec(at=NOON - 60, prompt=4, completion=6), rec("bob", at=NOON - 30, prompt=1)]
    await write_as_before_the_fog(old, before)
    new = await make_store()
    assert await new.schema_version() == MIGRATIONS[-1].version
    after = [rec(at=NOON - 10, prompt=0, completion=0, outcome=Outcome.MODEL_NOT_FOUND)]
    after.append(rec(at=NOON - 5, prompt=2, completion=3))
    await new.write(after)
    # The rows came along, and the minute sums still follow every insert.
    assert await minute_sums(new) == expected_sums([*before, *after]) == await record_sums(new)
    window = await new.user_window("alice", day_start=NOON - 7200, minute_start=NOON - 60)
    assert window.tokens_today == 4 + 6 + 2 + 3


async def write_as_before_the_fog(store: UsageStore, records: Sequence[UsageRecord]) -> None:
    """Records as a fognode before schema step 4 wrote them (without served_by)."""
    columns = COLUMNS[:13]
    rows = [r.row()[:13] for r in records]
    names = ", ".join(columns)
    if isinstance(store, SqliteStore):
        db = store._db(write=True)
        await db.executemany(
            f"INSERT INTO usage_records ({names}) VALUES ({', '.join('?' * len(columns))})", rows
        )
        await db.commit()
        return
    assert isinstance(store, PostgresStore)
    values = ", ".join(
        f"to_timestamp(${n})" if name.endswith("_at") else f"${n}"
        for n, name in enumerate(columns, 1)
    )
    await store._db().executemany(f"INSERT INTO usage_records ({names}) VALUES ({values})", rows)


async def test_migration_4_names_the_entry_node_as_the_one_that_served_older_records(
    make_store: StoreFactory,
) -> None:
    old = await make_store(MIGRATIONS[:3])
    await write_as_before_the_fog(old, [rec(node="node-a"), rec("bob", node="node-b")])
    new = await make_store()
    assert await new.schema_version() >= 4
    served = dataclasses.replace(rec("carol", node="node-a"), served_by="node-c")
    await new.write([served])
    rows = await served_by_rows(new)
    assert rows == {
        ("alice", "node-a", "node-a"),
        ("bob", "node-b", "node-b"),
        ("carol", "node-a", "node-c"),
    }


async def served_by_rows(store: UsageStore) -> set[tuple[str, str, str]]:
    query = "SELECT uid, node, served_by FROM usage_records"
    if isinstance(store, SqliteStore):
        async with store._db(write=False).execute(query) as cur:
            return {tuple(row) for row in await cur.fetchall()}  # type: ignore[misc]
    assert isinstance(store, PostgresStore)
    return {(r[0], r[1], r[2]) for r in await store._db().fetch(query)}


async def test_a_day_that_starts_off_midnight_and_off_the_minute(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    three = NOON - 9 * 3600  # 03:00 UTC
    await store.write(
        [
            rec(at=three - 60.5, prompt=1000, completion=0),  # the day before
            rec(at=three - 0.001, prompt=1000, completion=0),  # the day before, just
            rec(at=three, prompt=1, completion=0),
            rec(at=three + 29, prompt=2, completion=0),
            rec(at=three + 30, prompt=4, completion=0),
            rec(at=three + 59.5, prompt=8, completion=0),
            rec(at=three + 60, prompt=16, completion=0),
            rec(at=NOON - 1, prompt=32, completion=0),
        ]
    )
    at_three = await store.user_window("alice", day_start=three, minute_start=NOON - 60)
    assert at_three.tokens_today == 1 + 2 + 4 + 8 + 16 + 32
    # FOGNODE_QUOTA_DAY_START takes seconds too (03:00:30): the part minute
    # before the first whole one is summed from its records.
    at_half = await store.user_window("alice", day_start=three + 30, minute_start=NOON - 60)
    assert at_half.tokens_today == 4 + 8 + 16 + 32
    options = QuotaOptions(day_start=timedelta(hours=3, seconds=30))
    ledger = UsageLedger(BatchWriter(store, StoreOptions(sqlite_path=Path("unused"))), options)
    for now in (three + 30, NOON):
        assert (await ledger.usage("alice", now=now)).tokens_today == 4 + 8 + 16 + 32


# --- backend specifics ---------------------------------------------------------------------


async def test_sqlite_file_is_in_wal_mode_and_the_quota_query_uses_the_index(
    tmp_path: Path,
) -> None:
    store = open_store(StoreOptions(sqlite_path=tmp_path / "u.sqlite3"))
    assert isinstance(store, SqliteStore)
    await store.open()
    try:
        assert await store.integrity_check() == "ok"
        await store.write([rec()])
        for suffix in ("", "-wal", "-shm"):  # uids and times: for the node's user only
            assert (tmp_path / f"u.sqlite3{suffix}").stat().st_mode & 0o777 == 0o600
        db = store._db(write=False)
        async with db.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone()) == ("wal",)
        from fognode.usage.sqlite_store import _USER_WINDOW

        params = {"uid": "a", "day": 0.0, "minute": 0.0, "first_minute": 0}
        async with db.execute("EXPLAIN QUERY PLAN " + _USER_WINDOW, params) as cur:
            plan = [str(row[-1]) for row in await cur.fetchall()]
        # No step scans the user's day of records: the day from the minute
        # sums, the sliding minute and the day's part minute by index range.
        minute_range = (
            "SEARCH usage_records USING COVERING INDEX usage_by_user_time (uid=? AND started_at>?)"
        )
        assert plan.count(minute_range) == 1
        assert "SEARCH usage_minutes USING PRIMARY KEY (uid=? AND minute>?)" in plan
        assert (
            "SEARCH usage_records USING COVERING INDEX usage_by_user_time "
            "(uid=? AND started_at>? AND started_at<?)" in plan
        )
    finally:
        await store.close()
