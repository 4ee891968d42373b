"""Streams are relayed as they are produced, and a client leaving stops Ollama.

The relay test gates the stand-in: it may send chunk k+1 only after the
client has already received chunk k through the gateway. A gateway that
buffered (the whole answer, or into larger blocks) would deadlock here and
the hang guard would fail the test; no timing threshold is involved.
"""

from __future__ import annotations

import asyncio
import gc
import json

import aiohttp

from fognode.gateway.node.server import RunningServer
from fognode.gateway.telemetry.stats import STATS
from tests.support.helpers import STREAMED_CHAT as CHAT
from tests.support.helpers import wait_until
from tests.support.ollama_standin import OllamaStandIn

HANG_GUARD = 10.0  # seconds; only to turn a deadlock into a failure


async def test_each_sse_event_reaches_client_before_the_next_is_produced(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    standin.gate = asyncio.Queue()
    words = standin.reply.split(" ")
    received: list[str] = []
    # Asking for the usage chunk ourselves: otherwise the gateway asks for it and
    # takes it out again, and one event produced is never received (the usage
    # tests check that case).
    body = {**CHAT, "stream_options": {"include_usage": True}}
    async with http.post(f"{gateway.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        while True:
            standin.gate.put_nowait(None)  # allow exactly one more chunk upstream
            async with asyncio.timeout(HANG_GUARD):
                event = await resp.content.readuntil(b"\n\n")
            payload = event.decode().removeprefix("data: ").strip()
            received.append(payload)
            if payload == "[DONE]":
                break
            # Nothing more may have been produced than what we have seen.
            assert standin.chunks_sent == len(received)
    assert json.loads(received[-2])["usage"]["completion_tokens"] == len(words)
    deltas = [json.loads(p)["choices"][0]["delta"]["content"] for p in received[:-3]]
    assert "".join(deltas).split(" ") == words


async def test_ndjson_lines_reach_client_one_by_one(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    standin.gate = asyncio.Queue()
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
    lines = []
    async with http.post(f"{gateway.url}/api/chat", json=body) as resp:
        assert resp.headers["Content-Type"] == "application/x-ndjson"
        while True:
            standin.gate.put_nowait(None)
            async with asyncio.timeout(HANG_GUARD):
                line = await resp.content.readuntil(b"\n")
            lines.append(json.loads(line))
            assert standin.chunks_sent == len(lines)
            if lines[-1]["done"]:
                break
    assert "".join(x["message"]["content"] for x in lines) == standin.reply
    assert lines[-1]["done_reason"] == "stop"


async def _stream_then_disconnect(url: str, events_to_read: int) -> None:
    # A fresh session per call so closing it really closes the socket.
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{url}/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        for _ in range(events_to_read):
            async with asyncio.timeout(HANG_GUARD):
                await resp.content.readuntil(b"\n\n")
        resp.close()  # drop the TCP connection mid-stream


async def test_client_disconnect_cancels_upstream_at_once(
    gateway: RunningServer, standin: OllamaStandIn
) -> None:
    """Ollama is told while it is still thinking, not when its next token fails to send.

    The stand-in is gated: after two chunks it produces nothing more. Only a
    gateway that notices the disconnect by itself (handler cancellation) and
    closes the upstream connection lets the stand-in see the cancel; one that
    waits for the next upstream chunk would hang here.
    """
    standin.gate = asyncio.Queue()
    standin.gate.put_nowait(None)
    standin.gate.put_nowait(None)
    await _stream_then_disconnect(gateway.url, events_to_read=2)
    async with asyncio.timeout(HANG_GUARD):
        await standin.cancel_event.wait()
    assert standin.cancelled == 1
    assert standin.completed == 0
    assert standin.chunks_sent == 2  # generation stopped where the client left
    stats = gateway.app[STATS]
    await wait_until(lambda: stats.active_streams == 0, "stream slot released")
    assert stats.client_disconnects_total == 1
    assert stats.active_requests == 0
    # The upstream TCP connection was closed, not parked in the pool.
    assert standin._runner is not None and standin._runner.server is not None
    await wait_until(lambda: not standin._runner.server.connections, "upstream socket closed")


async def test_client_disconnect_before_first_byte_cancels_upstream(
    gateway: RunningServer, standin: OllamaStandIn
) -> None:
    """A non-streamed request abandoned while Ollama still processes the prompt."""
    standin.first_byte_delay = 30
    body = dict(CHAT, stream=False)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
        try:
            async with session.post(f"{gateway.url}/v1/chat/completions", json=body):
                raise AssertionError("the stand-in should not have answered")
        except TimeoutError:
            pass
    async with asyncio.timeout(HANG_GUARD):
        await standin.cancel_event.wait()
    stats = gateway.app[STATS]
    await wait_until(lambda: stats.active_requests == 0, "request slot released")


async def test_repeated_disconnects_leave_no_tasks_connections_or_objects(
    gateway: RunningServer, standin: OllamaStandIn
) -> None:
    standin.token_delay = 0.02
    baseline_tasks = {t for t in asyncio.all_tasks() if not t.done()}
    rounds = 30
    for _ in range(rounds):
        await _stream_then_disconnect(gateway.url, events_to_read=1)
    await wait_until(lambda: standin.cancelled == rounds, "every generation cancelled")
    stats = gateway.app[STATS]
    await wait_until(lambda: stats.active_streams == 0 and stats.active_requests == 0, "slots")
    assert stats.client_disconnects_total == rounds
    assert standin.completed == 0
    assert standin._runner is not None and standin._runner.server is not None
    await wait_until(lambda: not standin._runner.server.connections, "upstream sockets closed")
    assert gateway.runner.server is not None
    await wait_until(lambda: not gateway.runner.server.connections, "client sockets closed")

    def leftover_tasks() -> set[asyncio.Task[object]]:
        current = asyncio.current_task()
        return {t for t in asyncio.all_tasks() if not t.done() and t is not current} - (
            baseline_tasks
        )

    await wait_until(lambda: not leftover_tasks(), "handler tasks finished")
    gc.collect()
    live = [o for o in gc.get_objects() if isinstance(o, aiohttp.ClientResponse)]
    assert live == [], f"{len(live)} upstream responses still alive"
