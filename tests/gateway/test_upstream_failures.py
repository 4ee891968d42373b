"""When Ollama is down, slow, or breaks mid-answer, the client is told clearly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import aiohttp
import pytest

from fognode.gateway.telemetry.stats import STATS
from tests.support.gateway import GatewayFactory
from tests.support.helpers import CHAT, free_port
from tests.support.ollama_standin import OllamaStandIn


async def test_unreachable_upstream_is_502_naming_it_and_how_to_start_ollama(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = await make_gateway(dead)
    async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 502
        error = (await resp.json())["error"]
    assert dead in error["message"]
    assert "ollama serve" in error["message"]
    assert error["code"] == "upstream_unreachable"
    assert error["type"] == "upstream_error"


async def test_first_byte_timeout_is_504_and_abandons_the_upstream_request(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    standin.first_byte_delay = 30
    gateway = await make_gateway(standin.url, first_byte_timeout=0.3)
    async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 504
        error = (await resp.json())["error"]
    assert error["code"] == "upstream_first_byte_timeout"
    assert "FOGNODE_FIRST_BYTE_TIMEOUT" in error["message"]
    async with asyncio.timeout(10):
        await standin.cancel_event.wait()


async def test_stalled_stream_ends_with_an_sse_error_event(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    standin.stall_after = 3
    gateway = await make_gateway(standin.url, idle_timeout=0.3)
    async with http.post(
        f"{gateway.url}/v1/chat/completions", json=dict(CHAT, stream=True)
    ) as resp:
        assert resp.status == 200
        async with asyncio.timeout(10):
            raw = await resp.read()
    events = [e for e in raw.decode().split("\n\n") if e]
    assert len(events) == 4
    last = json.loads(events[-1].removeprefix("data: "))
    assert last["error"]["code"] == "upstream_idle_timeout"
    assert "[DONE]" not in raw.decode()
    assert gateway.app[STATS].upstream_failures_total == 1
    async with asyncio.timeout(10):
        await standin.cancel_event.wait()  # the stalled generation was abandoned


@pytest.mark.parametrize(
    ("path", "stream_format"),
    [
        ("/v1/chat/completions", "sse"),
        ("/api/chat", "ndjson"),
    ],
)
async def test_upstream_dying_mid_stream_ends_with_an_error_frame(
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    path: str,
    stream_format: str,
) -> None:
    standin.die_after = 2
    gateway = await make_gateway(standin.url)
    async with http.post(gateway.url + path, json=dict(CHAT, stream=True)) as resp:
        assert resp.status == 200
        async with asyncio.timeout(10):
            raw = await resp.read()
    if stream_format == "sse":
        frames = [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e]
    else:
        frames = [line for line in raw.decode().split("\n") if line]
    assert len(frames) == 3
    error = json.loads(frames[-1])["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert "broke off" in message and standin.url in message


async def test_partial_event_is_terminated_before_the_error_frame(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    """An upstream that dies inside an event must not glue the error onto it.

    The relay passes SSE on whole lines, so the half line never reaches the
    client: the error event is the first and only thing it reads.
    """

    async def half_event(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"choices": [{"delta": {"content": "he')
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return response

    app = aiohttp.web.Application()
    app.router.add_post("/v1/chat/completions", half_event)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        gateway = await make_gateway(f"http://127.0.0.1:{port}")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{gateway.url}/v1/chat/completions", json=dict(CHAT, stream=True)) as resp,
        ):
            raw = await resp.read()
    finally:
        await runner.cleanup()
    events = raw.decode().split("\n\n")
    assert events[-1] == ""
    assert len(events) == 2, raw
    assert json.loads(events[0].removeprefix("data: "))["error"]["code"] == (
        "upstream_disconnected"
    )


async def test_ollama_errors_pass_through_with_status_and_wording(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    busy = {"error": "server busy, please try again.  maximum pending requests exceeded"}
    standin.force_error = (503, busy)
    gateway = await make_gateway(standin.url)
    model = CHAT["model"]
    async with http.post(f"{gateway.url}/api/generate", json={"model": model, "prompt": "y"}) as r:
        assert r.status == 503  # one upstream: its busy answer is the answer
        assert await r.json() == busy
    async with http.post(f"{gateway.url}/api/chat", json=CHAT) as r:
        assert r.status == 503
    standin.force_error = None
    # A model the upstream has not got: the node's model check answers, in Ollama's shape.
    async with http.post(f"{gateway.url}/api/chat", json=dict(CHAT, model="missing")) as r:
        assert r.status == 404
        assert await r.json() == {"error": "model 'missing' not found, try pulling it first"}
    # One it lists but no longer has (removed on its machine since the check): its own 404,
    # reworded the same way.
    standin.models = tuple(m for m in standin.models if m != "qwen2.5:0.5b")
    async with http.post(f"{gateway.url}/api/chat", json=dict(CHAT, model="qwen2.5:0.5b")) as r:
        assert r.status == 404
        assert await r.json() == {"error": "model 'qwen2.5:0.5b' not found, try pulling it first"}


async def test_connect_timeout_is_504_naming_the_setting(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A host that never completes the TCP handshake (here: a full accept queue)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: the queue fills after one connection
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        gateway = await make_gateway(f"http://127.0.0.1:{port}", connect_timeout=0.5)
        async with http.get(f"{gateway.url}/api/tags") as resp:
            assert resp.status == 504
            error = (await resp.json())["error"]
        assert error["code"] == "upstream_connect_timeout"
        assert f"127.0.0.1:{port}" in error["message"]
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
