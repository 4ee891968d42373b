"""Connection exhaustion without a token (issue 11, defect 2): the flood.

The flood runs against `fognode serve` as a process whose descriptor limit
the test sets (1,024, the common default), over TLS as a production node
serves; the smaller cases run in-process (tests/gateway/test_connection_flood.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from fognode.auth.api_keys import entry_for, new_key
from tests.support.helpers import STREAMED_CHAT as CHAT
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import make_pki
from tests.support.processes import NodeProcess

KEY = new_key()


GUARD = 60.0  # turns a hang into a failure; nothing asserts on time


async def open_silent(port: int, count: int, sources: list[str]) -> list[socket.socket]:
    """``count`` TCP connections that never send a byte, from ``sources`` in turn."""
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []

    async def one(index: int) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((sources[index % len(sources)], 0))
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        except OSError:
            sock.close()  # refused or reset by the node: it may, and it is closed
            return
        socks.append(sock)

    for start in range(0, count, 100):  # in batches: the listen backlog is finite
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + 100))))
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


@pytest.fixture
async def flooded_node(
    standin: OllamaStandIn, tmp_path: Path
) -> AsyncIterator[tuple[NodeProcess, ssl.SSLContext]]:
    standin.token_delay = 0.01
    pki = make_pki(tmp_path / "certs")
    node = NodeProcess(
        tmp_path,
        {
            "certs_dir": str(pki.paths.directory),
            "upstream_url": standin.url,
            "api_keys": entry_for(KEY, "flood-test", admin=False),
            # Long enough that only the caps, not the reaper, can save the node.
            "client_first_byte_timeout": "300",
        },
        nofile=(1024, 1024),
    )
    client_tls = ssl.create_default_context(cafile=str(pki.ca))
    await node.start(client_tls)
    yield node, client_tls
    await node.astop()


async def healthz_and_a_stream(node: NodeProcess, tls: ssl.SSLContext) -> None:
    connector = aiohttp.TCPConnector(ssl=tls, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, asyncio.timeout(GUARD):
        async with http.get(f"https://localhost:{node.port}/healthz") as resp:
            assert resp.status == 200
        async with http.post(
            f"https://localhost:{node.port}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {KEY}"},
        ) as resp:
            assert resp.status == 200
            body = await resp.read()
    assert body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    "sources",
    [
        [f"127.0.0.{i}" for i in range(2, 202)],  # many hosts: the total cap
        ["127.0.0.1"],  # one host, the one the probes come from: the per-client cap
    ],
    ids=["from 200 addresses", "from the probe's own address"],
)
async def test_2000_silent_connections_leave_healthz_and_streams_working(
    flooded_node: tuple[NodeProcess, ssl.SSLContext], sources: list[str]
) -> None:
    node, tls = flooded_node
    socks = await open_silent(node.port, 2000, sources)
    try:
        await healthz_and_a_stream(node, tls)
        # And again once the flood has filled every slot it can.
        more = await open_silent(node.port, 500, sources)
        socks += more
        await healthz_and_a_stream(node, tls)
    finally:
        close_all(socks)
    assert node.alive
    log = node.log()
    assert "Too many open files" not in log and "out of system resource" not in log
    # The cap it chose, and why: the node's line (each worker logs its share at DEBUG).
    assert "client connections: as many as the descriptor limits allow" in log
    assert "closing an idle connection" in log  # the flood did reach a cap


async def test_the_soft_descriptor_limit_is_raised_to_the_hard_one(
    standin: OllamaStandIn, tmp_path: Path
) -> None:
    node = NodeProcess(
        tmp_path,
        {"tls": "false", "auth": "none", "upstream_url": standin.url},
        nofile=(1024, 4096),
    )
    await node.start()
    try:
        assert node.alive
        pid = node.pid
        # The processes that hold client connections: the workers, or the one process.
        children = await asyncio.to_thread(Path(f"/proc/{pid}/task/{pid}/children").read_text)
        serving = [int(p) for p in children.split()]
        for process in serving or [pid]:
            limits = await asyncio.to_thread(Path(f"/proc/{process}/limits").read_text)
            line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
            assert line.split()[3:5] == ["4096", "4096"]
        raised = node.log().count("descriptor limit raised from 1024 to 4096")
        assert raised == max(1, len(serving))
    finally:
        await node.astop()
