"""The pieces of `serve --workers N` whose logic is subtle, in one process:
the channel gives back each lease exactly once whichever way the call ends,
the node's /metrics is the sum of the workers', caps are divided so their
shares add up, and the shared port is one port for every worker."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fognode.embedded.options import cores
from fognode.gateway.config.identity import node_id
from fognode.gateway.config.settings import Settings
from fognode.gateway.node.lifecycle import close_ledger, node_ledger, prepare_once
from fognode.gateway.node.protocol import Probed
from fognode.gateway.node.supervisor import worker_count, worker_share
from fognode.gateway.options import upstream_options
from fognode.gateway.telemetry.metrics import merge_expositions
from fognode.gateway.upstreams.pool import UpstreamPool
from fognode.routing.warm import from_ollama_ps
from fognode.usage.migrations import MIGRATIONS
from fognode.usage.options import Limits
from fognode.usage.quota import Decision, Usage, decide
from fognode.usage.record import Outcome, UsageRecord
from fognode.workers.channel import CallFailed, Channel, ChannelClosed, Reply
from fognode.workers.messages import codec
from fognode.workers.ports import SharedPort
from tests.support.helpers import wait_until
from tests.support.usage import rec

Pair = tuple[Channel, Channel, list[str]]
T = TypeVar("T")


def across(kind: type[T], value: T) -> T:
    """``value`` as the other side of a worker's channel reads it (JSON)."""
    wire = codec(kind)
    return wire.decode(json.loads(json.dumps(wire.encode(value))))


waiting: list[asyncio.Future[None]] = []  # the handlers of "wait" calls, still waiting


@pytest.fixture(params=["in a task", "in the step that reads it"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    """A caller and a callee whose ``hold`` call leases a slot at once (and logs
    its release); a ``wait`` call waits for ever first. ``hold`` is answered by
    the handler in a task, or by ``serve_now`` (as the supervisor answers an
    acquire that finds a free slot): leases behave the same either way."""
    log: list[str] = []
    waiting.clear()

    def grant(args: list[object]) -> Reply:
        log.append(f"granted {args[0]}")
        return Reply(["granted"], release=lambda: log.append(f"released {args[0]}"))

    async def serve(op: str, args: list[object]) -> Reply:
        if op == "wait":
            never = asyncio.get_running_loop().create_future()
            waiting.append(never)
            await never
        if op in ("hold", "wait"):
            return grant(args)
        return Reply([op, *args])

    def serve_now(op: str, args: list[object]) -> Reply | None:
        return grant(args) if op == "hold" else None

    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    at_once = request.param != "in a task"
    caller, callee = Channel(), Channel(serve=serve, serve_now=serve_now if at_once else None)
    await loop.create_unix_connection(lambda: caller, sock=ours)
    await loop.create_unix_connection(lambda: callee, sock=theirs)
    yield caller, callee, log
    caller.close()
    callee.close()


async def test_a_lease_is_released_once_when_the_caller_is_done(pair: Pair) -> None:
    caller, callee, log = pair
    answer = await caller.call("hold", 1)
    assert answer.values == ["granted"] and callee.leases == 1
    caller.done(answer.id)
    caller.done(answer.id)  # a second "done" finds nothing to release
    await wait_until(lambda: callee.leases == 0, "the release")
    await caller.call("echo")  # one round trip later nothing more happened
    assert log == ["granted 1", "released 1"]


async def test_a_call_the_immediate_handler_fails_fails_for_the_caller() -> None:
    async def serve(op: str, args: list[object]) -> Reply:
        return Reply([op, *args])

    def serve_now(op: str, args: list[object]) -> Reply | None:
        if op == "broken":
            raise ValueError("no such thing")
        return None

    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    caller, callee = Channel(), Channel(serve=serve, serve_now=serve_now)
    await loop.create_unix_connection(lambda: caller, sock=ours)
    await loop.create_unix_connection(lambda: callee, sock=theirs)
    with pytest.raises(CallFailed, match="ValueError: no such thing"):
        await caller.call("broken")
    assert (await caller.call("echo", 1)).values == ["echo", 1]  # the channel still works
    caller.close()
    callee.close()


async def test_a_caller_that_gives_up_while_waiting_gets_nothing(pair: Pair) -> None:
    caller, callee, log = pair
    task = asyncio.create_task(caller.call("wait", 2))  # waits for a grant that never comes
    await wait_until(lambda: bool(waiting), "the handler to wait")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: waiting[0].cancelled(), "the handler to be cancelled")
    await caller.call("echo")
    assert log == [] and callee.leases == 0


async def test_leases_are_released_when_the_connection_drops(pair: Pair) -> None:
    caller, callee, log = pair
    answers = [await caller.call("hold", n) for n in (3, 4)]
    assert callee.leases == 2 and all(a.values == ["granted"] for a in answers)
    caller.close()  # the worker is gone
    await wait_until(lambda: callee.lost.is_set(), "the callee to notice")
    assert sorted(log) == ["granted 3", "granted 4", "released 3", "released 4"]
    with pytest.raises(ChannelClosed):
        await caller.call("echo")


def exposition(requests: int, streams: int, up: int, seconds: list[float]) -> str:
    registry = CollectorRegistry()
    Counter("fognode_requests", "r", ["status"], registry=registry).labels("200").inc(requests)
    Gauge("fognode_active_streams", "s", registry=registry).set(streams)
    Gauge("fognode_upstream_up", "u", registry=registry).set(up)
    latency = Histogram("fognode_seconds", "l", buckets=(1.0, 5.0), registry=registry)
    for value in seconds:
        latency.observe(value)
    return generate_latest(registry).decode()


def test_the_nodes_metrics_are_the_workers_summed() -> None:
    merged = merge_expositions(
        [exposition(3, 1, 0, [0.5, 2.0]), exposition(4, 2, 1, [7.0]), exposition(0, 0, 0, [])]
    )
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(merged.decode())
        for s in family.samples
    }
    assert samples[("fognode_requests_total", (("status", "200"),))] == 7
    assert samples[("fognode_active_streams", ())] == 3
    assert samples[("fognode_upstream_up", ())] == 1  # up if any worker reached it
    assert samples[("fognode_seconds_bucket", (("le", "1.0"),))] == 1
    assert samples[("fognode_seconds_bucket", (("le", "5.0"),))] == 2
    assert samples[("fognode_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("fognode_seconds_count", ())] == 3
    assert samples[("fognode_seconds_sum", ())] == 9.5


@pytest.mark.parametrize("total", [0, 1, 2, 3, 7, 64, 1000])
@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_divided_caps_add_up_to_the_setting(total: int, workers: int) -> None:
    shares = [worker_share(total, workers, i) for i in range(workers)]
    if total == 0:
        assert shares == [0] * workers  # no cap stays no cap
    elif total >= workers:
        assert sum(shares) == total and max(shares) - min(shares) <= 1
    else:  # each worker needs one: warned about at start
        assert shares == [1] * workers


def test_no_more_workers_than_the_smallest_divided_cap() -> None:
    def count(**settings: int) -> int:
        return worker_count(Settings(host="127.0.0.1", **settings))

    assert count(workers=4) == 4  # the per-client cap (64) allows 4
    assert count(workers=4, upstream_max_concurrent=2) == 2
    assert count(workers=4, max_connections_per_client=3, max_connections=100) == 3
    assert count(workers=4, max_connections_per_client=0) == 4  # 0: no cap, no limit
    assert count(workers=1, upstream_max_concurrent=8) == 1


def test_the_shared_port_is_one_port_for_every_worker() -> None:
    port = SharedPort.reserve("127.0.0.1", 0)
    try:
        assert port.port > 0
        sockets = port.sockets() + port.sockets()
        try:
            assert {s.getsockname()[1] for s in sockets} == {port.port}
            for sock in sockets:
                sock.listen()
            # The reservation itself never listens, so it takes no connection.
            with socket.create_connection(("127.0.0.1", port.port)):
                pass
        finally:
            for sock in sockets:
                sock.close()
    finally:
        port.close()


def test_one_worker_per_core_is_the_default() -> None:
    """Nothing is kept per worker that would make a node of workers behave
    otherwise than one process (README, Every core), so every core serves."""
    settings = Settings(host="127.0.0.1")
    caps = [c for c in (settings.max_connections, settings.max_connections_per_client) if c]
    assert settings.workers == 0 and worker_count(settings) == min(cores(), *caps)
    assert worker_count(Settings(host="127.0.0.1", workers=1)) == 1


async def test_the_supervisor_makes_once_what_workers_would_race_for(tmp_path: Path) -> None:
    """Node id, session key and the migrated store exist before any worker
    starts, and every worker gets the one node id in its settings."""
    settings = Settings(
        host="127.0.0.1",
        status_page=True,
        session_key_file=tmp_path / "session.key",
        usage_sqlite_path=tmp_path / "usage.sqlite3",
    )
    prepared = await prepare_once(settings)
    assert prepared.node_id and prepared.node_id == node_id(settings)
    assert len(bytes.fromhex((tmp_path / "session.key").read_text().strip())) == 32
    ledger = await node_ledger(prepared)
    try:
        assert await ledger.writer.store.schema_version() == MIGRATIONS[-1].version
    finally:
        await close_ledger(ledger, 1.0)


async def test_a_workers_pool_follows_the_supervisors_checks_and_checks_nothing() -> None:
    """What the supervisor's check found crosses the channel (JSON) and
    becomes the worker pool's state; the worker's pool never probes an
    upstream itself, and a refresh asks the supervisor (``checks``)."""
    urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    options = upstream_options(Settings(host="127.0.0.1", upstream_urls=urls))
    supervisor = UpstreamPool(urls, options)
    up, down = supervisor.members
    up.healthy, up.models = True, frozenset({"llama3.2:1b", "qwen3:0.6b"})
    up.loaded = from_ollama_ps(
        {"models": [{"name": "llama3.2:1b", "size": 5, "expires_at": "2030-01-01T00:00:00Z"}]}
    )
    down.healthy, down.last_error = False, "cannot connect (refused)"
    asked: list[str] = []

    async def ask() -> None:
        asked.append("check")

    worker = UpstreamPool(urls, options, probe_elsewhere=ask)
    await worker.start()  # no probe: nothing listens on ports 1 and 2
    try:
        assert [m.healthy for m in worker.members] == [None, None]
        worker.members[0].warmed.add("qwen3:0.6b")
        worker.follow(across(Probed, Probed(1, supervisor.findings())).findings)
        first, second = worker.members
        assert (first.healthy, first.models, first.loaded) == (True, up.models, up.loaded)
        assert first.warmed == set()  # the check's list holds what requests warmed
        assert (second.healthy, second.last_error) == (False, "cannot connect (refused)")
        assert worker.known_models() == ["llama3.2:1b", "qwen3:0.6b"]
        await worker.refresh()
        assert asked == ["check"]
    finally:
        await worker.close()


def test_quota_decisions_and_records_cross_the_channel_unchanged() -> None:
    """What a worker's RemoteUsageLedger and the coordinator send each other is
    JSON on the channel: nothing may be lost or retyped on the way."""
    record = rec(
        "apikey:alice",
        at=1_700_000_000.25,
        prompt=12,
        completion=34,
        outcome=Outcome.CLIENT_DISCONNECTED,
        partial=True,
        node="n1",
    )
    assert across(UsageRecord, record) == record
    used = Usage(requests_last_minute=3, oldest_request=1_700_000_000.0)
    refused = decide(Limits(0, 3), used, estimate=10, now=1_700_000_010.0, day_end=1_700_050_000)
    assert not refused.allowed and refused.code == "rate_limit_exceeded"
    assert across(Decision, refused) == refused
