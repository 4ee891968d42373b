"""Routing in the gateway, with Ollama stand-ins of different speeds as upstreams
(issue 23): a slow upstream with the model loaded no longer takes every request,
a request waits for a live upstream instead of getting a dead one's refusal, an
upstream is taken out and back in by its breaker, a busy answer sends the
request elsewhere, and a model the node does not have is a plain 404 at once."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fognode.gateway.pipeline.admission import ADMISSION, Admission
from fognode.gateway.upstreams.pool import UPSTREAM
from tests.support.gateway import GatewayFactory
from tests.support.helpers import wait_until
from tests.support.ollama_standin import OllamaStandIn

MODEL = "llama3.2:1b"
MISSING = "phi4:14b"  # a name the app's pattern can match
GUARD = 30.0


def chat(model: str = MODEL, *, stream: bool = True, tag: str = "hi") -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": tag}]}


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, str], bytes]:
    async with http.post(url + path, json=body) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def forwarded_chats(standin: OllamaStandIn) -> int:
    return sum(1 for r in standin.forwarded if r.path == "/v1/chat/completions")


@pytest.fixture
async def slow_and_fast() -> AsyncIterator[tuple[OllamaStandIn, OllamaStandIn]]:
    """A slow upstream with the model loaded that runs one request at a time (and
    queues the rest, as Ollama does), and a fast one with the model on disk."""
    slow = OllamaStandIn(token_delay=0.03, parallel=1)
    slow.load(MODEL)
    fast = OllamaStandIn(token_delay=0.002, load_delay=0.3)
    for standin in (slow, fast):
        await standin.start()
    yield slow, fast
    for standin in (slow, fast):
        await standin.stop()


async def test_a_slow_loaded_upstream_no_longer_takes_every_request(
    slow_and_fast: tuple[OllamaStandIn, OllamaStandIn],
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    """Before: 20 of 20 went to the slow one (the model is loaded there); the
    other, with the model on disk, sat idle."""
    slow, fast = slow_and_fast
    gateway = await make_gateway(slow.url, upstream_urls=[slow.url, fast.url])
    async with asyncio.timeout(GUARD):
        results = await asyncio.gather(
            *(post(http, gateway.url, chat(tag=f"{i}")) for i in range(20))
        )
    assert all(status == 200 for status, _, _ in results)
    reasons = Counter(headers["X-Fognode-Upstream-Reason"] for _, headers, _ in results)
    print(f"\nslow {forwarded_chats(slow)}, fast {forwarded_chats(fast)}: {dict(reasons)}")
    assert forwarded_chats(slow) + forwarded_chats(fast) == 20
    assert forwarded_chats(fast) >= 5, reasons
    # Once both are measured, the next round goes by expected start: the fast one
    # (now loaded) takes most of it.
    async with asyncio.timeout(GUARD):
        again = await asyncio.gather(
            *(post(http, gateway.url, chat(tag=f"b{i}")) for i in range(20))
        )
    where = Counter(headers["X-Fognode-Upstream"] for _, headers, _ in again)
    assert where["2"] > where["1"], where


async def test_a_request_waits_for_the_live_upstream_at_its_cap_not_the_down_one(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    live, doomed = OllamaStandIn(), OllamaStandIn()
    for standin in (live, doomed):
        standin.load(MODEL)
        await standin.start()
    live.gate = asyncio.Queue()
    try:
        gateway = await make_gateway(
            live.url, upstream_urls=[live.url, doomed.url], upstream_max_concurrent=1
        )
        pool = gateway.app[UPSTREAM]
        await doomed.stop()
        # The first request takes the live upstream's one slot and holds it.
        held = asyncio.create_task(post(http, gateway.url, chat(tag="held")))
        await wait_until(lambda: live.active == 1 or pool.members[1].breaker.out, "one sent")
        # The rest: none may get the dead one's refusal; they wait for the live one.
        waiting = [
            asyncio.create_task(post(http, gateway.url, chat(tag=f"w{i}"))) for i in range(3)
        ]
        await wait_until(lambda: pool.members[1].healthy is False, "the dead one is out")
        await wait_until(lambda: pool.waiting >= 3, "three wait for a slot")
        assert not any(task.done() for task in waiting)
        for _ in range(1000):
            live.gate.put_nowait(None)
        results = await asyncio.gather(held, *waiting)
    finally:
        await live.stop()
    assert [status for status, _, _ in results] == [200] * 4
    reasons = [headers["X-Fognode-Upstream-Reason"] for _, headers, _ in results[1:]]
    assert all(r.startswith("loaded,") and "waited" in r for r in reasons), reasons
    async with http.get(f"{gateway.url}/metrics") as resp:
        assert "waited" in await resp.text()


async def test_the_breaker_takes_an_upstream_out_and_a_probe_brings_it_back(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Back within the breaker's cooldown, not the (here: minute-long) check interval."""
    first, second = OllamaStandIn(), OllamaStandIn()
    for standin in (first, second):
        standin.load(MODEL)
        await standin.start()
    port = int(second.url.rsplit(":", 1)[1])
    try:
        gateway = await make_gateway(
            first.url,
            upstream_urls=[first.url, second.url],
            upstream_check_interval=60,
            upstream_breaker_cooldown=0.2,
        )
        pool = gateway.app[UPSTREAM]
        await second.stop()
        # Requests keep working: the refusal takes it out at once, they go to the other.
        for i in range(4):
            status, headers, _ = await post(http, gateway.url, chat(tag=f"{i}"))
            assert (status, headers["X-Fognode-Upstream"]) == (200, "1")
        assert pool.members[1].healthy is False and pool.members[1].breaker.trips == 1
        # It comes back: a probe notices, and it takes requests again.
        revived = OllamaStandIn()
        revived.load(MODEL)
        await revived.start(port=port)
        try:
            await wait_until(lambda: pool.members[1].healthy is True, "upstream 2 back", 10)
            results = [await post(http, gateway.url, chat(tag=f"r{i}")) for i in range(4)]
            assert {h["X-Fognode-Upstream"] for _, h, _ in results} == {"1", "2"}
        finally:
            await revived.stop()
    finally:
        await first.stop()


async def test_a_busy_answer_sends_the_request_elsewhere_and_counts_as_load(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Someone uses the first Ollama directly and fills its one slot and queue:
    it answers 503 "server busy". That is load: the request goes to the other
    upstream, and the next one does not try the busy one again at once."""
    busy, other = OllamaStandIn(parallel=1, max_queue=0), OllamaStandIn()
    busy.load(MODEL)
    for standin in (busy, other):
        await standin.start()
    busy.gate = asyncio.Queue()
    try:
        gateway = await make_gateway(
            busy.url, upstream_urls=[busy.url, other.url], metrics_public=True
        )
        direct = asyncio.create_task(post(http, busy.url, chat(tag="direct")))
        await wait_until(lambda: busy.active == 1, "the busy one's slot taken directly")
        status, headers, body = await post(http, gateway.url, chat())
        assert status == 200 and body.rstrip().endswith(b"data: [DONE]")
        assert headers["X-Fognode-Upstream"] == "2"
        assert headers["X-Fognode-Upstream-Reason"] == "cold,only,failover"
        assert busy.busy_answers == 1
        status, headers, _ = await post(http, gateway.url, chat(tag="next"))
        assert (status, headers["X-Fognode-Upstream"]) == (200, "2")
        assert busy.busy_answers == 1  # not asked again while it counts as full
        async with http.get(f"{gateway.url}/metrics") as resp:
            assert 'fognode_upstream_busy_answers_total{upstream="1"} 1.0' in await resp.text()
        for _ in range(100):
            busy.gate.put_nowait(None)
        assert (await direct)[0] == 200
    finally:
        for standin in (busy, other):
            await standin.stop()


async def test_an_upstream_that_hangs_up_before_answering_is_failed_over_and_counted(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Nothing reached the client: another upstream takes the request. Such
    failures count; the third in a row takes the upstream out."""
    flaky, steady = OllamaStandIn(hang_up=True), OllamaStandIn()
    for standin in (flaky, steady):
        standin.load(MODEL)
        await standin.start()
    try:
        gateway = await make_gateway(flaky.url, upstream_urls=[flaky.url, steady.url])
        pool = gateway.app[UPSTREAM]
        tried = 0
        for i in range(6):
            status, headers, body = await post(http, gateway.url, chat(tag=f"{i}"))
            assert status == 200 and body.rstrip().endswith(b"data: [DONE]")
            assert headers["X-Fognode-Upstream"] == "2"
            if headers["X-Fognode-Upstream-Reason"].endswith(",failover"):
                tried += 1
        assert tried == 3 and forwarded_chats(flaky) == 3
        assert pool.members[0].healthy is False and pool.members[0].breaker.trips == 1
    finally:
        for standin in (flaky, steady):
            await standin.stop()


# --- the model check comes before the queue ---------------------------------------------


@pytest.fixture
async def busy_node(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> AsyncIterator[str]:
    """A node whose one slot is taken, with a request queued behind it."""
    standin.gate = asyncio.Queue()
    gateway = await make_gateway(
        standin.url,
        max_concurrent_requests=1,
        per_user_concurrent_requests=4,
        stream_heartbeat_after=0.2,
        stream_heartbeat_interval=0.2,
    )
    admission: Admission = gateway.app[ADMISSION]
    holder = asyncio.create_task(post(http, gateway.url, chat(tag="holder")))
    queued = asyncio.create_task(post(http, gateway.url, chat(tag="queued")))
    await wait_until(lambda: admission.active == 1 and admission.queued == 1, "a busy node")
    yield gateway.url
    for _ in range(1000):
        standin.gate.put_nowait(None)
    assert [(await task)[0] for task in (holder, queued)] == [200, 200]


async def test_a_model_the_node_lacks_is_a_plain_404_at_once_not_after_the_queue(
    busy_node: str, http: aiohttp.ClientSession
) -> None:
    """Before: it queued (8.8 s measured on a busy node), got 200 headers and
    heartbeats, and the 404 came inside the stream: the app showed a generic error."""
    async with asyncio.timeout(GUARD):
        status, headers, body = await post(http, busy_node, chat(MISSING))
    assert status == 404 and headers["Content-Type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error["message"] == f"model '{MISSING}' not found, try pulling it first"
    assert error["code"] == "model_not_found" and error["type"] == "not_found_error"
    # Ollama's native API, in Ollama's shape; and names as Ollama resolves them pass.
    native = {"model": MISSING, "messages": [{"role": "user", "content": "hi"}]}
    status, _, body = await post(http, busy_node, native, "/api/chat")
    assert status == 404
    assert json.loads(body) == {"error": f"model '{MISSING}' not found, try pulling it first"}


async def test_a_model_pulled_on_the_upstreams_machine_is_found_without_a_check(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(standin.url, upstream_check_interval=60)
    standin.models = (*standin.models, MISSING)  # `ollama pull` on its own machine
    status, _, body = await post(http, gateway.url, chat(MISSING))
    assert status == 200 and body.rstrip().endswith(b"data: [DONE]")


async def test_when_no_upstream_lists_models_the_upstream_decides(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    standin.models = ()  # lists nothing: the node cannot know
    gateway = await make_gateway(standin.url)
    status, _, body = await post(http, gateway.url, chat(MISSING, stream=False))
    # The upstream's own 404, reworded as before.
    assert status == 404 and standin.forwarded
    assert MISSING in json.loads(body)["error"]["message"]
