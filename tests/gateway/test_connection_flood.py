"""Connection exhaustion without a token (issue 11, defect 2): the connection
guard's caps and deadlines, on the gateway in the test's process.

The flood itself runs against `fognode serve` as a process whose descriptor
limit the test sets (tests/system/test_connection_flood.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

from fognode.gateway.node.server import RunningServer
from fognode.gateway.transport.connections import client_key
from tests.support.gateway import GatewayFactory
from tests.support.helpers import wait_until
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import make_pki
from tests.support.raw_http import exchange, request

GUARD = 60.0  # turns a hang into a failure; nothing asserts on time


async def test_a_silent_connection_is_closed_after_the_first_byte_timeout(
    standin: OllamaStandIn, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "certs")
    for tls in (False, True):
        gateway = await make_gateway(
            standin.url,
            tls=tls,
            certs_dir=pki.paths.directory,
            client_first_byte_timeout=0.3,
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        async with asyncio.timeout(GUARD):
            assert await hung_up(reader)
        writer.close()
        guard = gateway.runner.guard  # type: ignore[attr-defined]
        await wait_until(lambda g=guard: len(g) == 0, "the guard forgot the connection")
        assert guard.reaped_total == 1


async def test_an_idle_keepalive_connection_is_closed_after_keepalive_timeout(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(standin.url, keepalive_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(request("GET", "/healthz", close=False))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)
    async with asyncio.timeout(GUARD):
        assert await reader.read() == b""  # closed by the node, not by us
    writer.close()


async def hung_up(reader: asyncio.StreamReader) -> bool:
    """Whether the node closed the connection (FIN or RST) without a byte."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True


async def silent_from(port: int, host: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))


async def test_at_the_per_client_cap_idle_connections_make_room_then_busy_ones_refuse(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    standin.first_byte_delay = 30  # upstream answers hold their connections busy
    gateway = await make_gateway(standin.url, max_connections_per_client=3)
    silent = [await silent_from(gateway.port, "127.0.0.1") for _ in range(3)]
    # A fourth from the same address that speaks is served: the oldest silent
    # one made room.
    resp = await exchange(gateway.port, request("GET", "/healthz"))
    assert resp.status == 200
    async with asyncio.timeout(GUARD):
        assert await hung_up(silent[0][0])
    # Three requests in progress: nothing is idle, a fourth connection is refused.
    generate = request("POST", "/api/generate", body=b'{"model": "llama3.2:1b", "prompt": "x"}')
    busy = [asyncio.create_task(exchange(gateway.port, generate)) for _ in range(3)]
    await wait_until(lambda: len(standin.forwarded) == 3, "three requests upstream")
    refused = await exchange(gateway.port, request("GET", "/healthz"))
    assert refused.status == 503
    assert refused.error()["code"] == "too_many_connections"
    assert refused.headers["retry-after"] == "1"
    for task in busy:
        task.cancel()
    for _, writer in silent:
        writer.close()


async def test_the_total_cap_counts_every_address(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    gateway: RunningServer = await make_gateway(standin.url, max_connections=4)
    silent = [await silent_from(gateway.port, f"127.0.0.{i}") for i in range(2, 6)]
    assert (await exchange(gateway.port, request("GET", "/healthz"))).status == 200
    guard = gateway.runner.guard  # type: ignore[attr-defined]
    assert guard.evicted_total == 1
    metrics = (await exchange(gateway.port, request("GET", "/metrics"))).body.decode()
    assert 'fognode_client_connections_closed_total{reason="idle"} 1.0' in metrics
    for _, writer in silent:
        writer.close()


def test_clients_are_counted_by_address_and_ipv6_by_its_64() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("fe80::1%eth0") == "fe80::/64"


async def test_a_client_hello_that_arrives_a_byte_at_a_time_still_completes(
    standin: OllamaStandIn, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """TLS starts on the first byte; the rest of the hello reaches it through
    the transport, in however many pieces."""
    pki = make_pki(tmp_path / "certs")
    gateway = await make_gateway(standin.url, tls=True, certs_dir=pki.paths.directory)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="spezillmfog.local")
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    async with asyncio.timeout(GUARD):
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                for byte in outgoing.read():
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0)
                incoming.write(await reader.read(65536))
        tls.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        writer.write(outgoing.read())
        answer = b""
        while not answer.endswith(b"}"):
            data = await reader.read(65536)
            if not data:
                break
            incoming.write(data)
            with contextlib.suppress(ssl.SSLWantReadError):
                answer += tls.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK")


async def test_a_pipelined_request_in_progress_is_not_taken_for_idle(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    standin.first_byte_delay = 1.0
    gateway = await make_gateway(standin.url, max_connections_per_client=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    generate = b'{"model": "llama3.2:1b", "prompt": "x", "stream": false}'
    writer.write(
        request("GET", "/healthz", close=False) + request("POST", "/api/generate", body=generate)
    )
    await wait_until(lambda: len(standin.forwarded) == 1, "the second request upstream")
    other = await exchange(gateway.port, request("GET", "/healthz"))
    assert other.status == 503  # the one connection allowed is busy: not closed for this one
    async with asyncio.timeout(GUARD):
        both = await reader.read()  # to the end: the second asked to close
    writer.close()
    assert both.count(b"HTTP/1.1 200 OK") == 2
