"""Usage records for the tests of the usage parts: made by hand, written as
sample stores, and read back from a gateway's SQLite file."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import aiosqlite

from fognode.gateway.node.server import RunningServer
from fognode.gateway.pipeline.quotas import USAGE
from fognode.gateway.telemetry.stats import STATS
from fognode.usage.backends import open_store
from fognode.usage.migrations import MIGRATIONS, Migration
from fognode.usage.options import StoreOptions
from fognode.usage.record import Outcome, UsageRecord
from fognode.usage.store import UsageStore
from tests.support.helpers import wait_until

# 2026-03-14 12:00:00 UTC: far from a day boundary unless a test moves it.
NOON = 1_773_489_600.0
_seq = itertools.count()

StoreFactory = Callable[..., Awaitable[UsageStore]]


@asynccontextmanager
async def stores(
    make: Callable[[tuple[Migration, ...]], UsageStore],
) -> AsyncIterator[StoreFactory]:
    """A factory that opens stores of one backend (``make``: one store, given
    its migrations), each on its own connection; all closed at the end."""
    opened: list[UsageStore] = []

    async def factory(migrations: tuple[Migration, ...] = MIGRATIONS) -> UsageStore:
        store = make(migrations)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


def rec(
    uid: str = "alice",
    *,
    model: str = "llama3.2:1b",
    at: float = NOON,
    prompt: int = 10,
    completion: int = 20,
    outcome: Outcome = Outcome.COMPLETED,
    partial: bool = False,
    node: str = "node-a",
) -> UsageRecord:
    return UsageRecord(
        uid=uid,
        model=model,
        upstream="http://127.0.0.1:11434",
        route="/v1/chat/completions",
        started_at=at,
        ended_at=at + 1.5,
        prompt_tokens=prompt,
        completion_tokens=completion,
        outcome=outcome,
        partial=partial,
        request_id=f"req-{next(_seq)}",
        node_id=node,
    )


RANGE = ["--since", "2026-03-14", "--until", "2026-03-15T00:00:00+00:00"]
RECORDS = [
    rec("alice", model="a", prompt=100, completion=900),
    rec("alice", model="b", prompt=10, completion=20, partial=True),
    rec("apikey:ci", model="a", prompt=1, completion=2),
    rec("apikey:ci", model="a", prompt=0, completion=0, outcome=Outcome.REJECTED),
    rec("bob", model="a", at=NOON - 86400, prompt=5, completion=5),  # the day before
]


def populate(options: StoreOptions) -> None:
    async def write() -> None:
        store = open_store(options)
        await store.open()
        await store.write(RECORDS)
        await store.close()

    asyncio.run(write())


Row = dict[str, Any]


async def rows(gateway: RunningServer, where: str = "1", *args: object) -> list[Row]:
    path = gateway.app[USAGE].options.store.sqlite_path
    assert path is not None
    async with aiosqlite.connect(path) as db:
        db.row_factory = aiosqlite.Row
        async with db.execute(
            f"SELECT * FROM usage_records WHERE {where} ORDER BY started_at", args
        ) as cur:
            return [dict(row) for row in await cur.fetchall()]


async def recorded(gateway: RunningServer, request_ids: list[str]) -> list[Row]:
    """The records of these requests, once they are all in the store; then
    also every other record written meanwhile, so a second one would show."""
    marks = ",".join("?" * len(request_ids))
    where = f"request_id IN ({marks})"
    found: list[Row] = []

    async def all_there() -> bool:
        nonlocal found
        found = await rows(gateway, where, *request_ids)
        return len({r["request_id"] for r in found}) == len(set(request_ids))

    async with asyncio.timeout(20):
        while not await all_there():  # noqa: ASYNC110 (a file, polled)
            await asyncio.sleep(0.02)
    writer = gateway.app[USAGE].writer
    assert writer is not None
    await wait_until(lambda: gateway.app[STATS].active_streams == 0, "handlers done")
    await wait_until(lambda: not writer.pending(), "every record written")
    return await rows(gateway, where, *request_ids)


def rid() -> str:
    """A fresh request id, to find a request's record by."""
    return uuid.uuid4().hex


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    *,
    request_id: str,
    key: str | None = None,
) -> tuple[int, bytes, dict[str, str]]:
    headers = {"X-Request-ID": request_id}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.read(), dict(resp.headers)
