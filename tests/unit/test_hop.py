"""The hop to the upstream (gateway/upstreams/hop.py) on its own, against scripted raw upstreams.

The end-to-end tests drive it through the whole gateway; these pin down its
subtle logic one case at a time: a connection is reused only after an answer
that ended cleanly, an idempotent request is sent again once when a kept-alive
connection turns out closed (and nothing else is), the response head is
bounded, the pool holds its limit and hands connections on, and giving up on
a request closes its connection (how Ollama learns to stop).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from multidict import CIMultiDict

from fognode.gateway.upstreams.hop import (
    BadResponse,
    BodyBroken,
    ConnectFailed,
    Disconnected,
    HeadTimeout,
    HopOptions,
    HopPool,
    HopResponse,
)
from tests.support.helpers import wait_until
from tests.support.pki import make_pki

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Reply = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Script:
    """A raw upstream: ``reply(connection number, request head, writer)`` answers
    each request and says whether to keep the connection open."""

    reply: Reply
    url: str = ""
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[tuple[int, bytes]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # a client closed one


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    if b"transfer-encoding: chunked" in head.lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            part = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += part[:-2]
    return head, body


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[..., Awaitable[Script]]]:
    servers: list[asyncio.Server] = []

    async def start(reply: Reply, tls: ssl.SSLContext | None = None) -> Script:
        script = Script(reply)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            script.connections += 1
            number = script.connections
            script.open_now += 1
            script.most_open = max(script.most_open, script.open_now)
            try:
                while True:
                    try:
                        head, body = await _read_request(reader)
                    except (asyncio.IncompleteReadError, ConnectionError):
                        script.closed.set()  # the client closed it
                        return
                    script.requests.append((number, head))
                    script.bodies.append(body)
                    if not await script.reply(number, head, writer):
                        return
            finally:
                script.open_now -= 1
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        script.url = f"https://localhost:{port}" if tls else f"http://127.0.0.1:{port}"
        return script

    yield start
    for server in servers:
        server.close()


def pool(script: Script, **options: float) -> HopPool:
    settings: dict[str, float] = {"max_connections": 4, "connect_timeout": 5.0} | options
    return HopPool(script.url, HopOptions(**settings))  # type: ignore[arg-type]


async def get(hop: HopPool, method: str = "GET", body: bytes | None = None) -> HopResponse:
    return await hop.request(method, "/x", CIMultiDict(), body, head_timeout=5.0)


async def read_and_release(answer: HopResponse) -> bytes:
    body = await answer.read()
    answer.release()
    return body


async def closed_by_client(script: Script) -> None:
    """Until the upstream saw the hop close a connection (how Ollama learns to stop)."""
    async with asyncio.timeout(5):
        await script.closed.wait()


async def drained(hop: HopPool) -> None:
    """Until the pool counts no open connection (a close lands a loop turn later)."""
    await wait_until(lambda: hop.connections == 0, "every connection closed")


async def silent(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    return True  # no answer; the next read sees the client close


async def answer_ok(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(OK)
    await writer.drain()
    return True


# --- reuse only after a clean end --------------------------------------------------


async def test_a_connection_is_reused_after_an_answer_read_to_its_end(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    script = await upstream(answer_ok)
    hop = pool(script)
    for _ in range(3):
        assert await read_and_release(await get(hop)) == b"ok"
    assert script.connections == 1
    assert (hop.connections, hop.idle) == (1, 1)
    await hop.close()


async def test_a_chunked_answer_ends_cleanly_and_its_connection_is_reused(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    async def chunked(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        return True

    script = await upstream(chunked)
    hop = pool(script)
    assert await read_and_release(await get(hop)) == b"data: 1\n\ndata: 2\n\n"
    assert await read_and_release(await get(hop)) == b"data: 1\n\ndata: 2\n\n"
    assert script.connections == 1
    await hop.close()


async def _stream_then_close(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
    """llama.cpp's server: a streamed answer that says Keep-Alive, then the
    connection closed; a plain answer keeps it."""
    if b"stream" not in head:
        writer.write(
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\nContent-Length: 2\r\n\r\nok"
        )
        await writer.drain()
        return True
    writer.write(
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n0\r\n\r\n"
    )
    await writer.drain()
    return False


async def post(hop: HopPool, target: str) -> HopResponse:
    return await hop.request("POST", target, CIMultiDict(), b"{}", head_timeout=5.0)


async def test_a_connection_that_carried_a_stream_is_not_reused_where_that_is_known(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    """The embedded engine (reuse_after_stream=False): streamed answers back to
    back never meet a connection the engine is closing, where a POST sent on
    it would be lost (it cannot be sent again); plain answers reuse theirs."""
    script = await upstream(_stream_then_close)
    hop = pool(script, reuse_after_stream=False)
    for _ in range(20):
        assert await read_and_release(await post(hop, "/stream")) == b"data: 1\n\n"
    assert script.connections == 20
    for _ in range(3):
        assert await read_and_release(await post(hop, "/plain")) == b"ok"
    assert script.connections == 21
    await hop.close()


async def test_an_upstream_that_closes_after_a_stream_is_noticed_and_not_raced(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    """Any other upstream that closes an idle connection right after a stream
    shows that it does; from then on such connections are not reused."""
    script = await upstream(_stream_then_close)
    hop = pool(script)
    assert hop.reuse_after_stream
    assert await read_and_release(await post(hop, "/stream")) == b"data: 1\n\n"
    await wait_until(lambda: not hop.reuse_after_stream, "the close seen while idle")
    for _ in range(20):
        assert await read_and_release(await post(hop, "/stream")) == b"data: 1\n\n"
    assert script.connections == 21
    await hop.close()


async def test_a_server_that_says_it_is_llama_cpp_is_known_to_close_after_a_stream(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    """An operator's own llama-server as an OpenAI-compatible upstream: its
    Server header says what it will do, before any request could race it."""

    async def llama(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nKeep-Alive: timeout=5, max=100\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        )
        await writer.drain()
        return False

    script = await upstream(llama)
    hop = pool(script)
    for _ in range(10):  # back to back: not one lost
        assert await read_and_release(await post(hop, "/stream")) == b"ok"
    assert not hop.reuse_after_stream and script.connections == 10
    await hop.close()


async def test_closing_idle_connections_itself_teaches_the_pool_nothing(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    """Ollama keeps its connections after a stream; the pool closing them (its
    own shutdown) is not the upstream closing them."""

    async def keeps(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        await writer.drain()
        return True

    script = await upstream(keeps)
    hop = pool(script)
    assert await read_and_release(await post(hop, "/stream")) == b"ok"
    await hop.close()
    await drained(hop)
    assert hop.reuse_after_stream


async def test_an_answer_given_up_on_closes_its_connection(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    """The relay closes an answer when the client left: the upstream must see
    the connection close (Ollama stops generating), and it is never reused."""

    async def endless(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        return True  # and never ends: the next read finds the client gone

    script = await upstream(endless)
    hop = pool(script)
    answer = await get(hop)
    assert await answer.readany() == b"first"
    answer.close()
    await closed_by_client(script)
    await drained(hop)
    assert hop.idle == 0
    await hop.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\n\r\nuntil the connection closes",  # no length, not chunked
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        OK + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",  # an answer nobody asked for
    ],
    ids=["read until close", "connection close", "HTTP/1.0", "bytes after the answer"],
)
async def test_a_connection_is_not_reused_after_an_answer_that_did_not_end_cleanly(
    upstream: Callable[..., Awaitable[Script]], reply: bytes
) -> None:
    async def once(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply)
        await writer.drain()
        await asyncio.sleep(0.05)  # the extra bytes, if any, arrive before the release
        return not reply.startswith(b"HTTP/1.1 200 OK\r\n\r\n")

    script = await upstream(once)
    hop = pool(script)
    first = await read_and_release(await get(hop))
    assert first in (b"ok", b"until the connection closes")
    assert await read_and_release(await get(hop)) in (b"ok", b"until the connection closes")
    assert script.connections == 2
    await hop.close()


async def test_a_body_cut_short_is_an_error_not_an_end(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    async def short(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        return False

    script = await upstream(short)
    hop = pool(script)
    answer = await get(hop)
    with pytest.raises(BodyBroken):
        await answer.read()
    answer.close()
    await drained(hop)
    await hop.close()


# --- sending again on a stale kept-alive connection -------------------------------


@pytest.mark.parametrize(
    ("method", "sent_again"), [("GET", True), ("DELETE", True), ("POST", False)]
)
async def test_only_an_idempotent_request_is_sent_again_after_a_kept_alive_connection_broke(
    upstream: Callable[..., Awaitable[Script]], method: str, sent_again: bool
) -> None:
    async def closes_under_the_second(
        number: int, head: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        if number == 1 and len(script.requests) == 2:
            return False  # read the request, close without answering
        writer.write(OK)
        await writer.drain()
        return True

    script = await upstream(closes_under_the_second)
    hop = pool(script)
    assert await read_and_release(await get(hop)) == b"ok"
    if sent_again:
        assert await read_and_release(await get(hop, method)) == b"ok"
        assert [n for n, _ in script.requests] == [1, 1, 2]
    else:
        with pytest.raises(Disconnected):
            await get(hop, method, b"{}")
        assert [n for n, _ in script.requests] == [1, 1]  # the POST went once
    await hop.close()


async def test_a_new_connection_that_breaks_is_not_sent_again(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    async def never(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    script = await upstream(never)
    hop = pool(script)
    with pytest.raises(Disconnected):
        await get(hop)
    assert script.connections == 1  # a fresh connection that broke: no retry
    await hop.close()


async def test_a_kept_alive_connection_seen_closed_is_replaced_without_a_word(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    """Closed while idle (the loop saw it): even a POST goes, on a new one."""

    async def then_close(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK)
        await writer.drain()
        return False

    script = await upstream(then_close)
    hop = pool(script)
    assert await read_and_release(await get(hop)) == b"ok"
    await asyncio.sleep(0.1)  # the close reaches the pool
    assert await read_and_release(await get(hop, "POST", b"{}")) == b"ok"
    assert [n for n, _ in script.requests] == [1, 2]
    await hop.close()


async def test_an_https_upstream_is_verified_and_its_connection_kept_alive(
    upstream: Callable[..., Awaitable[Script]], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "certs")
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(pki.paths.server_cert, pki.paths.server_key)
    script = await upstream(answer_ok, serving)
    trusting = ssl.create_default_context(cafile=str(pki.ca))
    hop = HopPool(script.url, HopOptions(max_connections=2, connect_timeout=5, ssl=trusting))
    assert await read_and_release(await get(hop)) == b"ok"
    assert await read_and_release(await get(hop)) == b"ok"
    assert script.connections == 1
    assert b"Host: localhost:" in script.requests[0][1]
    await hop.close()
    untrusted = pool(script)  # the system's CAs do not know the test CA
    with pytest.raises(ConnectFailed, match="TLS"):
        await get(untrusted)
    await untrusted.close()


# --- a bounded head ---------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 5000,  # one endless header
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: a\r\n" * 1000,  # endless header lines
    ],
    ids=["long header", "many headers"],
)
async def test_a_response_head_beyond_its_bound_is_refused_not_buffered(
    upstream: Callable[..., Awaitable[Script]], head: bytes
) -> None:
    async def endless(number: int, request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(head)
        await writer.drain()
        return True  # never ends the head

    script = await upstream(endless)
    hop = pool(script, max_head=4096)
    with pytest.raises(BadResponse) as refused:
        await get(hop)
    assert "a" * 20 not in str(refused.value)  # says what, never quotes the bytes
    await closed_by_client(script)
    await drained(hop)
    await hop.close()


async def test_an_interim_answer_is_skipped_for_the_real_one(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    async def early_hints(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK)
        await writer.drain()
        return True

    script = await upstream(early_hints)
    hop = pool(script)
    answer = await get(hop)
    assert answer.status == 200
    assert await read_and_release(answer) == b"ok"
    assert await read_and_release(await get(hop)) == b"ok"
    assert script.connections == 1
    await hop.close()


# --- the pool's limit, timeouts, cancellation ------------------------------------


async def test_the_pool_holds_its_limit_and_hands_connections_on(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    gate = asyncio.Event()

    async def held(number: int, head: bytes, writer: asyncio.StreamWriter) -> bool:
        await gate.wait()
        writer.write(OK)
        await writer.drain()
        return True

    script = await upstream(held)
    hop = pool(script, max_connections=2)

    async def one() -> bytes:
        return await read_and_release(await get(hop))

    tasks = [asyncio.create_task(one()) for _ in range(5)]
    await asyncio.sleep(0.2)
    assert (script.connections, len(script.requests)) == (2, 2)  # three wait for the pool
    gate.set()
    assert await asyncio.gather(*tasks) == [b"ok"] * 5
    assert script.most_open == 2
    assert len(script.requests) == 5
    await hop.close()


async def test_waiting_for_a_connection_counts_against_the_head_timeout(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    script = await upstream(silent)
    hop = pool(script, max_connections=1)
    first = asyncio.create_task(hop.request("GET", "/", CIMultiDict(), None, head_timeout=5))
    await asyncio.sleep(0.1)
    with pytest.raises(HeadTimeout):
        await hop.request("GET", "/", CIMultiDict(), None, head_timeout=0.2)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await closed_by_client(script)  # the cancelled request's connection
    await drained(hop)
    await hop.close()


async def test_a_head_that_never_comes_times_out_and_closes_the_connection(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    script = await upstream(silent)
    hop = pool(script)
    with pytest.raises(HeadTimeout):
        await hop.request("POST", "/", CIMultiDict(), b"{}", head_timeout=0.2)
    await closed_by_client(script)
    await drained(hop)
    await hop.close()


async def test_a_streamed_request_body_goes_chunked(
    upstream: Callable[..., Awaitable[Script]],
) -> None:
    script = await upstream(answer_ok)

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"", b"two"):
            yield part

    hop = pool(script)
    answer = await hop.request("POST", "/blob", CIMultiDict(), parts(), head_timeout=5)
    assert await read_and_release(answer) == b"ok"
    assert b"transfer-encoding: chunked" in script.requests[0][1].lower()
    assert script.bodies == [b"one two"]
    await hop.close()
