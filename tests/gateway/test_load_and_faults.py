"""Under load and under faults: nothing lost, nothing reordered, nothing stuck.

Bounded in count and time, loopback only.
"""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest

from fognode.gateway.node.server import RunningServer
from fognode.gateway.telemetry.stats import STATS
from tests.support.gateway import GatewayFactory
from tests.support.helpers import STREAMED_CHAT as CHAT
from tests.support.helpers import (
    chat_deltas,
    free_port,
    without_heartbeats,
    without_roles,
    without_usage_chunk,
)
from tests.support.ollama_standin import WIRE_FORMATS, OllamaStandIn

GUARD = 60.0


@pytest.mark.parametrize("wire", WIRE_FORMATS)
async def test_concurrent_streams_arrive_byte_for_byte(
    standin: OllamaStandIn, make_gateway: GatewayFactory, wire: str
) -> None:
    """1,000 streams at once: every client gets exactly the bytes the upstream wrote,
    with only the documented edits (a role on every delta, compat.py; the usage
    chunk the node asked for taken out again, usage/counter.py)."""
    standin.token_delay = 0.002
    standin.wire = wire
    standin.record_bodies = True
    n = 1000
    gateway = await make_gateway(
        standin.url, max_concurrent_requests=n, per_user_concurrent_requests=n
    )

    async def one(http: aiohttp.ClientSession, i: int) -> tuple[str, int, bytes]:
        rid = f"load-{i}"
        async with http.post(
            f"{gateway.url}/v1/chat/completions", json=CHAT, headers={"X-Request-ID": rid}
        ) as resp:
            return rid, resp.status, await resp.read()

    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector) as http, asyncio.timeout(GUARD):
        results = await asyncio.gather(*(one(http, i) for i in range(n)))
    assert {status for _, status, _ in results} == {200}
    for rid, _, raw in results:
        received = without_heartbeats(raw)
        sent = without_usage_chunk(standin.sent_bodies[rid])
        assert len(sent) < len(standin.sent_bodies[rid]), "the stand-in sent its usage chunk"
        assert without_roles(received) == without_roles(sent), rid
        assert all(d.get("role") == "assistant" for d in chat_deltas(received)), rid
        if wire == "legacy":  # every delta had its role: not another byte changed
            assert sent == received, rid
    stats = gateway.app[STATS]
    assert stats.active_streams == 0 and stats.upstream_failures_total == 0


async def test_upstream_down_at_start_then_back(make_gateway: GatewayFactory) -> None:
    port = free_port()
    gateway = await make_gateway(f"http://127.0.0.1:{port}")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 502
        standin = OllamaStandIn()
        await standin.start(port=port)
        try:
            async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
                assert resp.status == 200
                assert (await resp.read()).endswith(b"data: [DONE]\n\n")
            async with http.get(f"{gateway.url}/readyz") as resp:
                assert resp.status == 200
        finally:
            await standin.stop()


async def test_slow_reader_gets_back_pressure_not_buffering(
    gateway: RunningServer, standin: OllamaStandIn
) -> None:
    """A client that stops reading stops the upstream too: the gateway holds no backlog."""
    # Every delta has its role in the older format, and the client asks for the
    # usage chunk itself, so the bytes pass unedited.
    standin.wire = "legacy"
    body = {**CHAT, "stream_options": {"include_usage": True}}
    words = 40_000  # ~45 MB of SSE events, more than the kernel buffers in the path
    standin.reply = " ".join(["w" * 1000] * words)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(), read_bufsize=2**16) as http,
        http.post(
            f"{gateway.url}/v1/chat/completions", json=body, headers={"X-Request-ID": "slow-1"}
        ) as resp,
    ):
        first = await resp.content.readuntil(b"\n\n")  # first event, then stop reading
        # Wait until the stand-in can write no more (every buffer is full).
        last = -1
        async with asyncio.timeout(GUARD):
            while standin.chunks_sent != last:
                last = standin.chunks_sent
                await asyncio.sleep(0.5)
        stalled_at = standin.chunks_sent
        assert stalled_at < words, "everything was buffered somewhere"
        # Reading again drains it all, in order, with nothing lost.
        digest = hashlib.sha256(first)
        async for chunk in resp.content.iter_any():
            digest.update(chunk)
    assert standin.chunks_sent == words + 3  # the words, the finish, usage and [DONE]
    assert standin.sent_digests["slow-1"] == digest.hexdigest()
    print(f"\nupstream stalled after {stalled_at} of {words + 3} events while the client paused")


async def test_many_requests_on_one_keep_alive_connection(
    gateway: RunningServer,
) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(500):
            async with http.get(f"{gateway.url}/healthz") as resp:
                assert resp.status == 200
                await resp.read()
        assert gateway.runner.server is not None
        assert len(gateway.runner.server.connections) == 1


async def test_huge_headers_are_refused_and_the_server_carries_on(
    gateway: RunningServer,
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/healthz", headers={"X-Big": "a" * 100_000}) as resp:
            assert resp.status == 431
            error = (await resp.json())["error"]
            assert error["code"] == "headers_too_large" and "longer" in error["message"]
            assert "aaaa" not in error["message"]  # the offending bytes are not echoed
        async with http.get(f"{gateway.url}/healthz") as resp:
            assert resp.status == 200


async def test_slow_headers_are_cut_off(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    """Slowloris: a request head that never completes is dropped after the deadline."""
    gateway = await make_gateway(standin.url, header_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: a")  # ...and nothing more
    await writer.drain()
    async with asyncio.timeout(GUARD):
        closed = await reader.read()  # returns at EOF, when the server hangs up
    elapsed = loop.time() - started
    writer.close()
    assert closed == b""
    assert 0.4 < elapsed < 5, elapsed
    # Well-behaved clients are unaffected.
    async with aiohttp.ClientSession() as http, http.get(f"{gateway.url}/healthz") as resp:
        assert resp.status == 200


async def test_slow_body_gets_408(standin: OllamaStandIn, make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(standin.url, body_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 1000\r\n\r\n{"model": '
    )
    await writer.drain()
    answer = b""
    async with asyncio.timeout(GUARD):
        while b"body_timeout" not in answer:
            chunk = await reader.read(4096)
            if not chunk:
                break
            answer += chunk
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"code": "body_timeout"' in answer
    assert standin.forwarded == []


async def test_garbage_instead_of_http_gets_an_openai_shaped_400(gateway: RunningServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(GUARD):
        answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"  # HTTP/1.0 when the request line is unreadable
    assert b"application/json" in head
    assert b'"code": "malformed_http"' in body


async def test_a_reader_that_stops_for_good_is_dropped_and_ollama_cancelled(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    """Back-pressure must not become a hang: a stalled reader loses its slot."""
    gateway = await make_gateway(standin.url, client_write_timeout=0.5)
    standin.reply = " ".join(["w" * 1000] * 40_000)
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
        await resp.content.readuntil(b"\n\n")  # then never read again
        async with asyncio.timeout(GUARD):
            await standin.cancel_event.wait()
        stats = gateway.app[STATS]
        assert stats.client_disconnects_total == 1 and stats.active_streams == 0
        resp.close()
    assert standin.completed == 0
