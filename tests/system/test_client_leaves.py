"""A client that leaves mid-answer is one INFO line in the node's log, never an
ERROR with a traceback (issue 14): phones leaving Wi-Fi do it all day, and
under load aiohttp logged thousands of them.

A real `fognode serve` process (its stderr is what an operator reads) in
front of the stand-in; clients on raw sockets leave at each point where a
request can be: waiting for the upstream's first byte, mid-stream (closing
politely, or resetting the connection), mid-way through a plain answer,
many at once, and over TLS.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.helpers import CHAT, STREAMED_CHAT, wait_until
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import make_pki
from tests.support.processes import NodeProcess

# The one line a departure makes: its access-log line, with nginx's 499
# ("client closed request") and the bytes it got.
LEFT = '" 499 '


def _request(body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: spezillmfog.local\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )


async def _leave(
    node_process: NodeProcess,
    body: dict[str, object],
    *,
    read_until: bytes | None,
    reset: bool,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Send one request, read until ``read_until`` (None: nothing), then leave."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", node_process.port, ssl=tls, server_hostname="localhost" if tls else None
    )
    writer.write(_request(body))
    await writer.drain()
    if read_until is not None:
        async with asyncio.timeout(30):
            await reader.readuntil(read_until)
    else:
        await asyncio.sleep(0.3)  # the request is with the upstream by now
    sock = writer.get_extra_info("socket")
    if reset and sock is not None:
        # SO_LINGER 0: close() sends RST, as a phone dropping off Wi-Fi looks
        # to the node once its TCP stack gives up.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if reset and tls is not None:
        writer.transport.abort()
    else:
        writer.close()


def _problems(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if " ERROR " in line
        or " CRITICAL " in line
        or "Traceback" in line
        or "never retrieved" in line
        or "Unhandled exception" in line
    ]


@pytest.fixture
async def node_process(standin: OllamaStandIn, tmp_path: Path) -> AsyncIterator[NodeProcess]:
    process = NodeProcess(
        tmp_path,
        {
            "tls": "false",
            "auth": "none",
            "upstream_url": str(standin.url),
            "log_level": "INFO",
            "max_concurrent_requests": "256",
            "per_user_concurrent_requests": "256",
            "max_connections_per_client": "0",
        },
    )
    await process.start()
    yield process
    await process.astop()


async def _expect_left(node_process: NodeProcess, clients: int) -> None:
    await wait_until(
        lambda: node_process.log().count(LEFT) >= clients, f"{clients} departures logged"
    )
    await asyncio.sleep(0.5)  # anything logged late (a task collected later) shows too
    log = node_process.log()
    assert log.count(LEFT) == clients, log
    # From the test's first request on (a worker may answer the start probe
    # before another has logged its start), nothing but access-log lines: a
    # departure is its access line alone.
    lines = log.splitlines()
    first = next(
        i for i, line in enumerate(lines) if "fognode.access" in line and "/healthz" not in line
    )
    assert [line for line in lines[first:] if "fognode.access" not in line] == [], log
    assert _problems(log) == [], "\n".join(_problems(log))


@pytest.mark.parametrize(
    ("where", "body", "read_until", "reset"),
    [
        ("first_byte_delay", CHAT, None, True),  # waiting for the upstream's first byte
        ("token_delay", CHAT, None, False),  # during a plain answer (generation takes time)
        ("token_delay", STREAMED_CHAT, b"\n\n", False),  # mid-stream, closing politely
        ("token_delay", STREAMED_CHAT, b"\n\n", True),  # mid-stream, resetting
    ],
    ids=["before the first byte", "plain answer", "mid-stream closed", "mid-stream reset"],
)
async def test_a_client_that_leaves_is_one_info_line(
    node_process: NodeProcess,
    standin: OllamaStandIn,
    where: str,
    body: dict[str, object],
    read_until: bytes | None,
    reset: bool,
) -> None:
    setattr(standin, where, 2.0 if where == "first_byte_delay" else 0.1)
    await _leave(node_process, body, read_until=read_until, reset=reset)
    await wait_until(lambda: standin.cancelled == 1, "the upstream request cancelled")
    await _expect_left(node_process, 1)


async def test_many_clients_leaving_at_once_are_one_info_line_each(
    node_process: NodeProcess, standin: OllamaStandIn
) -> None:
    standin.token_delay = 0.01
    clients = 40
    await asyncio.gather(
        *(
            _leave(node_process, STREAMED_CHAT, read_until=b"\n\n", reset=i % 2 == 0)
            for i in range(clients)
        )
    )
    await wait_until(lambda: standin.cancelled == clients, "every generation cancelled")
    await _expect_left(node_process, clients)


async def test_a_tls_client_leaving_mid_stream_is_one_info_line(
    standin: OllamaStandIn, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "certs")
    node = NodeProcess(
        tmp_path,
        {
            "certs_dir": str(pki.paths.directory),
            "auth": "none",
            "upstream_url": str(standin.url),
            "log_level": "INFO",
        },
    )
    tls = ssl.create_default_context(cafile=str(pki.ca))
    await node.start(tls)
    try:
        standin.token_delay = 0.05
        await _leave(node, STREAMED_CHAT, read_until=b"\n\n", reset=True, tls=tls)
        await _leave(node, STREAMED_CHAT, read_until=b"\n\n", reset=False, tls=tls)
        await wait_until(lambda: standin.cancelled == 2, "both generations cancelled")
        await _expect_left(node, 2)
    finally:
        await node.astop()
