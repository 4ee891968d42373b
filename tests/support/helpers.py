"""Small helpers the test modules share."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
from collections.abc import Callable
from typing import Any

# The request most tests send: a chat completion for a model the stand-in has.
CHAT: dict[str, Any] = {
    "model": "llama3.2:1b",
    "messages": [{"role": "user", "content": "hi"}],
}
STREAMED_CHAT: dict[str, Any] = {**CHAT, "stream": True}
CHAT_BYTES = json.dumps(CHAT).encode()


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports handed out for a test to bind later lie below the kernel's ephemeral
# range: a port the kernel gave out (bind to 0) is soon given again to some
# process's outgoing connection, which then holds it when the test binds
# (seen with several suites on one machine). Below the range only another
# test's pick can clash, and the picks are random.
_PORTS_FROM, _PORTS_TO = 20_000, max(20_001, _ephemeral_floor())


def free_port() -> int:
    """A loopback port with nothing listening on it (right now), for a server
    the test configures before it starts (peers, for one, must know it)."""
    while True:
        port = random.randrange(_PORTS_FROM, _PORTS_TO)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll a condition that no event signals (counters, socket lists, log lines).

    The limit only turns a hang into a failure; no test asserts on the time.
    """
    try:
        async with asyncio.timeout(limit):
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None


HEARTBEAT_LINE = re.compile(rb"^: (?:keep-alive|queued \d+)\n", re.M)


def without_heartbeats(stream: bytes) -> bytes:
    """A stream without the comment lines the gateway adds while a request waits
    (a busy machine can make any request wait past the heartbeat delay)."""
    return HEARTBEAT_LINE.sub(b"", stream)


def without_roles(stream: bytes) -> bytes:
    """An OpenAI chat stream with every delta's role taken out.

    Through the gateway every delta carries ``"role":"assistant"`` (the
    SpeziLLMFog app needs it; compat.py); the upstream sends it in some
    chunks only. Equal after this, the two streams differ by nothing else.
    """
    return stream.replace(b'"delta":{"role":"assistant",', b'"delta":{').replace(
        b'"delta":{"role":"assistant"}', b'"delta":{}'
    )


USAGE_CHUNK = re.compile(rb'data: \{[^\n]*"choices":\[\],"usage":\{[^\n]*\n\n')


def without_usage_chunk(stream: bytes) -> bytes:
    """An upstream's stream without its usage chunk (``"choices": []``), which
    the gateway asks for and takes out again when the client did not ask for it."""
    return USAGE_CHUNK.sub(b"", stream)


def chat_deltas(stream: bytes) -> list[dict[str, Any]]:
    """Every delta of an OpenAI chat stream, in order."""
    deltas = []
    for line in stream.split(b"\n"):
        if line.startswith(b"data: {"):
            chunk = json.loads(line[len(b"data: ") :])
            deltas.extend(choice["delta"] for choice in chunk.get("choices", []))
    return deltas


async def stream_a_while(api: Any, model: str, chunks: int = 3) -> Any:
    """A streamed answer of up to 600 tokens (end of text ignored), read until
    ``chunks`` content chunks came: a phone about to leave mid-answer. The
    caller closes the returned stream (the openai SDK's AsyncStream)."""
    stream = await api.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count from one to five hundred in words."}],
        stream=True,
        max_tokens=600,
        extra_body={"ignore_eos": True},
    )
    received = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
        if received >= chunks:
            break
    return stream
