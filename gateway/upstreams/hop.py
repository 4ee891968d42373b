"""The hop to one upstream: HTTP/1.1 on asyncio protocols, parsed by llhttp.

aiohttp's client is general-purpose (cookies, redirects, proxies, auth,
tracing, payload types) and its request machinery cost about a quarter of
the gateway's CPU per proxied request. The proxy needs much less: send one
request it has already built, on a kept-alive connection, and hand the
answer's bytes on as they come. This module does only that, with the parser
Node.js uses (llhttp, through httptools) reading the upstream's bytes:

* a bounded pool of kept-alive connections per upstream (most recently used
  first, idle ones closed after ``keepalive_timeout``); a request waits for
  a connection only when the pool is at its limit, which the gateway sizes
  so that admitted requests never do (settings.py, ``upstream_max_connections``);
* a request is one write (head and body together); a streamed body (model
  blobs) goes chunked, as the client sends it, with back-pressure;
* the response head is bounded (``max_head`` bytes): an upstream that sends
  an endless header is cut off, not buffered;
* the body is read in whatever pieces the socket gives (Content-Length,
  chunked, or until the upstream closes); reading from the upstream pauses
  while the relay has not taken what came (back-pressure to Ollama);
* a connection is reused only when its answer ended cleanly on a reusable
  framing, with nothing after it; anything else closes it, and closing is how
  Ollama learns that the client left and stops generating;
* nor after a chunked (streamed) answer from an upstream that closes its
  connections after those while it says ``Keep-Alive`` (llama.cpp's server
  does: the next request on it would race the close and, being a POST, could
  not be sent again). The embedded engine is known to, and so is any server
  that says ``Server: llama.cpp``; any other upstream shows it by closing an
  idle connection right after such an answer (or under the next request),
  and the pool then stops reusing them (``reuse_after_stream``);
* a kept-alive connection that turns out to be closed is replaced without
  a word when nothing was sent on it, and a request that found it closed
  after sending is sent once more only if it is idempotent with a body that
  can be sent again (as aiohttp's client did, RFC 9112 section 9.3.1).

Errors are :class:`HopError` subclasses whose text names what happened and
never quotes the upstream's bytes (they reach clients in 502 bodies);
upstream.py turns them into the gateway's errors.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import ssl
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass

import httptools
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# Methods a request may be sent again for after a kept-alive connection broke
# under it (RFC 9110 section 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Unread body bytes above which reading from the upstream pauses.
READ_HIGH_WATER = 256 * 1024
# Bytes of a request body written at once when it fits (else the head and
# the body are two writes, without copying the body).
_JOIN_LIMIT = 16 * 1024
# An idle connection the upstream closes this soon after a streamed answer
# was closed because of that answer, not for idleness (llama.cpp's server:
# at once; idle timeouts are seconds).
STREAM_CLOSE_WINDOW = 1.0
# Servers known to close every streamed answer's connection (``Server:``).
CLOSES_AFTER_STREAM = ("llama.cpp",)

log = logging.getLogger("fognode.upstreams")


class HopError(Exception):
    """The exchange with the upstream failed; ``str()`` is safe to show."""


class ConnectFailed(HopError):
    """No connection could be made (refused, no route, name unknown, TLS): nothing was sent.

    ``refused_certificate``: the upstream answered, but with a certificate
    this end does not accept (not its CA's, or not the kind wanted)."""

    def __init__(self, reason: str, *, refused_certificate: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused_certificate = refused_certificate


class ConnectTimeout(HopError, TimeoutError):
    """The connection was not made in time: nothing was sent."""


class HeadTimeout(HopError, TimeoutError):
    """The request was sent and no response head came in time."""


class Disconnected(HopError):
    """The upstream closed the connection before a response head."""


class BadResponse(HopError):
    """The upstream's bytes are not a valid HTTP/1.1 response, or the head is too large."""


class BodyBroken(HopError):
    """The response body broke off: connection lost, or invalid chunked framing."""


class StatusError(HopError):
    """A response whose status is not a success, where one was required."""

    def __init__(self, status: int) -> None:
        super().__init__("the answer is not a success")
        self.status = status


class RequestBodyError(HopError):
    """Reading the client's streamed body failed (the client's fault); ``__cause__`` says how."""


@dataclass(frozen=True)
class HopOptions:
    max_connections: int  # connections to the upstream at once (busy and idle)
    connect_timeout: float  # TCP connect and TLS handshake
    keepalive_timeout: float = 30.0  # an idle connection is closed after this
    max_head: int = 64 * 1024  # bytes of a response head (status line, headers)
    max_fields: int = 256  # header fields of a response head
    ssl: ssl.SSLContext | None = None  # for https upstreams; None: the system's CAs
    # Looks at the certificate a TLS upstream presented (DER) once the handshake
    # is done, and raises when it is not the one wanted (a fog member's peer
    # port: the chain checks that OpenSSL does cannot see fognode's marker).
    check_peer: Callable[[bytes | None], object] | None = None
    # False: never reuse a connection after a chunked answer (an upstream known
    # to close them); True: reuse, until the upstream shows that it closes them.
    reuse_after_stream: bool = True


class HopResponse:
    """An upstream's answer: its head, and its body read piece by piece.

    The owner calls :meth:`release` once the body was read to its end (the
    connection goes back to the pool) or :meth:`close` when it gives up on
    it (the connection is closed, so the upstream stops).
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_size",
        "_waiter",
        "content_length",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        conn: _Connection,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        content_length: int | None,
    ) -> None:
        self._conn: _Connection | None = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length = content_length
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._done = False
        self._error: HopError | None = None
        self._waiter: asyncio.Future[None] | None = None

    # --- fed by the connection -----------------------------------------
    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > READ_HIGH_WATER and self._conn is not None:
            self._conn.pause_reading()
        self._wake()

    def _finish(self, error: HopError | None = None) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- read by the relay -----------------------------------------------
    @property
    def complete(self) -> bool:
        """The whole body arrived (it may not all have been read yet)."""
        return self._done and self._error is None

    async def readany(self) -> bytes:
        """The body bytes that arrived since the last call (waiting for some);
        b"" at the end. Raises BodyBroken if the body broke off."""
        while not self._chunks:
            if self._done:
                if self._error is not None:
                    raise self._error
                return b""
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        size, self._size = self._size, 0
        if size > READ_HIGH_WATER and self._conn is not None:
            self._conn.resume_reading()
        return data

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (at most ``limit`` bytes: the rest stays unread)."""
        parts: list[bytes] = []
        size = 0
        while limit is None or size < limit:
            part = await self.readany()
            if not part:
                break
            if limit is not None and size + len(part) > limit:
                self._chunks.appendleft(part[limit - size :])
                self._size += len(part) - (limit - size)
                part = part[: limit - size]
            parts.append(part)
            size += len(part)
        return b"".join(parts)

    def release(self) -> None:
        """The body was read to its end: the connection may serve another request."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.response_released(self)

    def close(self) -> None:
        """Give up on the answer: the connection is closed unless the body had ended."""
        conn, self._conn = self._conn, None
        self._chunks.clear()
        self._size = 0
        if conn is not None:
            conn.response_closed(self)


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to the upstream and its response parser."""

    __slots__ = (
        "_fields",
        "_head_bytes",
        "_head_waiter",
        "_headers",
        "_in_head",
        "_interim",
        "_lost",
        "_message_done",
        "_method",
        "_paused",
        "_peer_closed",
        "_reason",
        "_write_paused",
        "_write_waiter",
        "counted",
        "idle_since",
        "parser",
        "pool",
        "response",
        "reusable",
        "streamed",
        "transport",
        "used",
    )

    def __init__(self, pool: HopPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        # Control characters inside a header value are let through (as
        # aiohttp's client did) and the header dropped before it is relayed
        # (upstream.filter_response_headers); the framing stays strict.
        self.parser.set_dangerous_leniencies(lenient_headers=True)
        self.response: HopResponse | None = None
        self.reusable = False
        self.used = False  # a response came on it before (it is a kept-alive one)
        self.streamed = False  # its last answer was chunked
        self.counted = True  # in the pool's count of open connections
        self.idle_since = 0.0
        self._lost = False
        self._peer_closed = False  # the upstream ended the connection (FIN or reset)
        self._paused = False
        self._write_paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._head_waiter: asyncio.Future[HopResponse] | None = None
        self._method = ""
        self._reset_head()

    def _reset_head(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._fields = 0
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._message_done = False

    # --- asyncio.Protocol ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._head_waiter is None and (self.response is None or self._message_done):
            # Bytes nobody asked for (after a complete answer, or on an idle
            # connection): whatever they are, this connection is done.
            self._poison()
            return
        if self._head_waiter is not None:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Unasked):
                self._poison()
            else:
                self._fail(cause if isinstance(cause, HopError) else BadResponse(str(cause)))
            return
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(_parser_reason(exc)))
            return
        limit = self.pool.options.max_head
        if self._head_waiter is not None and self._head_bytes > limit:
            self._fail(BadResponse(f"the response head is larger than {limit} bytes"))

    def eof_received(self) -> bool | None:
        self._peer_closed = True
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.reusable = False
        idle = self.response is None and self._head_waiter is None and self.used
        if (
            self.streamed
            and idle
            and (self._peer_closed or exc is not None)
            and asyncio.get_running_loop().time() - self.idle_since < STREAM_CLOSE_WINDOW
        ):
            # Idle after a streamed answer, and closed by the upstream: at once
            # means because of the answer (llama.cpp's server), not idleness.
            self.pool.closes_after_stream()
        if self._head_waiter is not None:
            self._fail_head(Disconnected("the upstream closed the connection before answering"))
        response = self.response
        if response is not None and not self._message_done:
            if self.parser.should_keep_alive() is False and self._until_close():
                self._message_done = True
                response._finish()
            else:
                response._finish(BodyBroken("the upstream closed the connection mid-body"))
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(Disconnected("the upstream closed the connection"))
        self.pool.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- httptools callbacks ---------------------------------------------
    def on_message_begin(self) -> None:
        if self._message_done or self._head_waiter is None:
            raise _Unasked  # a second answer to one request: smuggled or garbage
        self._in_head = True

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer: not relayed (nothing downstream asks for them)
        self._fields += 1
        if self._fields > self.pool.options.max_fields:
            raise BadResponse(
                f"the response has more than {self.pool.options.max_fields} header fields"
            )
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100 Continue, 103 Early Hints: the answer follows
            return
        headers: CIMultiDict[str] = CIMultiDict()
        length: int | None = None
        for name, value in self._headers:
            key = name.decode("ascii", "replace")
            text = value.decode("utf-8", "replace")
            headers.add(key, text)
            if length is None and key.lower() == "content-length" and text.isdigit():
                length = int(text)
        self._headers = []
        reason = self._reason.decode("utf-8", "replace")
        self._reason = b""
        response = HopResponse(self, status, reason, CIMultiDictProxy(headers), length)
        self.response = response
        self.reusable = self.parser.should_keep_alive()
        self.streamed = "chunked" in headers.get("Transfer-Encoding", "").lower()
        if self.streamed and headers.get("Server", "").startswith(CLOSES_AFTER_STREAM):
            self.pool.closes_after_stream()  # known before it shows: no request races it
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if self._method == "HEAD" or status in (204, 304):
            # No body follows; llhttp does not know what was asked, so a HEAD
            # answer with a Content-Length would wait for one: the connection
            # is not used again (it was one HEAD request).
            self._message_done = True
            if self._method == "HEAD":
                self.reusable = False
            response._finish()

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None and not self._message_done:
            response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._reset_head()
            self._head_bytes = 0
            return
        if self._message_done:
            return
        self._message_done = True
        if self.response is not None:
            self.response._finish()
        if self.transport is not None and self.transport.get_write_buffer_size():
            self.reusable = False  # answered before the request was written whole

    # --- used by the pool and the response -------------------------------
    def _until_close(self) -> bool:
        """The answer's framing is 'until the connection closes' (no length, not chunked)."""
        response = self.response
        if response is None or response.content_length is not None:
            return False
        coding = response.headers.get("Transfer-Encoding", "")
        return "chunked" not in coding.lower()

    def _poison(self) -> None:
        self.reusable = False
        self.close()

    def _fail(self, error: HopError) -> None:
        self.reusable = False
        if self._head_waiter is not None:
            self._fail_head(error)
        elif self.response is not None and not self._message_done:
            self.response._finish(
                error if isinstance(error, BodyBroken) else BodyBroken(str(error))
            )
        self.close()

    def _fail_head(self, error: HopError) -> None:
        waiter, self._head_waiter = self._head_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None and not self._lost:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self._lost:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.close()

    def start(self, method: str) -> asyncio.Future[HopResponse]:
        """Expect the answer to a request about to be written."""
        self._method = method
        self.response = None
        self._reset_head()
        self._head_bytes = 0
        waiter: asyncio.Future[HopResponse] = asyncio.get_running_loop().create_future()
        self._head_waiter = waiter
        return waiter

    async def drain(self) -> None:
        if self._lost:
            raise Disconnected("the upstream closed the connection")
        if self._write_paused:
            self._write_waiter = asyncio.get_running_loop().create_future()
            await self._write_waiter

    def response_released(self, response: HopResponse) -> None:
        if response is not self.response:
            return
        if self.streamed and not self.pool.reuse_after_stream:
            self.reusable = False
        if self._message_done and self.reusable and not self._lost:
            self.response = None
            self.resume_reading()
            self.pool.put_back(self)
        else:
            self.response = None
            self.close()

    def response_closed(self, response: HopResponse) -> None:
        self.response_released(response)


def _parser_reason(exc: Exception) -> str:
    """llhttp's reason (a fixed phrase such as 'Invalid status code'; never the bytes)."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"the response is not valid HTTP ({reason[:100]})"


class HopPool:
    """The kept-alive connections to one upstream, and requests over them."""

    def __init__(self, base: str, options: HopOptions) -> None:
        url = URL(base)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"not an http(s) URL: {url.with_password(None)}")
        self.options = options
        self._host = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = options.ssl or ssl.create_default_context()
        default_port = url.port is None or url.is_default_port()
        host = f"[{url.host}]" if ":" in url.host else url.host
        self._host_header = host if default_port else f"{host}:{self._port}"
        self._prefix = url.raw_path.rstrip("/")
        # Credentials in the URL go as Basic auth, as aiohttp's client sent them.
        self._basic: str | None = None
        if url.user is not None:
            pair = f"{url.user}:{url.password or ''}".encode()
            self._basic = "Basic " + base64.b64encode(pair).decode("ascii")
        self._idle: collections.deque[_Connection] = collections.deque()
        self._count = 0  # connections open or being opened
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.reuse_after_stream = options.reuse_after_stream

    @property
    def connections(self) -> int:
        return self._count

    @property
    def idle(self) -> int:
        return len(self._idle)

    # --- connections -----------------------------------------------------
    async def _take(self, deadline: float) -> _Connection:
        """A kept-alive connection if one is idle, else a new one (waiting at the limit)."""
        while self._idle:
            conn = self._idle.pop()  # the most recently used: warm, least likely closed
            if not conn._lost:
                return conn
        while self._count >= self.options.max_connections:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise HeadTimeout("no connection to the upstream became free in time") from None
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            while self._idle:
                conn = self._idle.pop()
                if not conn._lost:
                    return conn
        return await self._connect(deadline)

    async def _connect(self, deadline: float) -> _Connection:
        if self._closed:
            raise ConnectFailed("the gateway is shutting down")
        loop = asyncio.get_running_loop()
        self._count += 1
        made: list[_Connection] = []

        def protocol() -> _Connection:
            made.append(_Connection(self))
            return made[-1]

        try:
            limit = min(self.options.connect_timeout, deadline - loop.time())
            try:
                async with asyncio.timeout(limit):
                    _, conn = await loop.create_connection(
                        protocol,
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._host if self._ssl is not None else None,
                        ssl_handshake_timeout=(
                            self.options.connect_timeout if self._ssl is not None else None
                        ),
                    )
            except TimeoutError:
                if limit < self.options.connect_timeout:
                    raise HeadTimeout("no connection to the upstream in time") from None
                raise ConnectTimeout(
                    f"no connection within {self.options.connect_timeout:g}s"
                ) from None
            except OSError as exc:  # refused, unreachable, name unknown, TLS (SSLError)
                refused = isinstance(exc, ssl.SSLCertVerificationError)
                raise ConnectFailed(_os_reason(exc), refused_certificate=refused) from None
            if self.options.check_peer is not None:
                _check_peer(conn, self.options.check_peer)
        except BaseException:
            if made:
                made[0].close()
                self.forget(made[0])
            else:
                self._count -= 1
                self._wake_one()
            raise
        return conn

    def put_back(self, conn: _Connection) -> None:
        """A connection whose answer ended cleanly: idle, until asked for or swept."""
        if self._closed or conn._lost:
            conn.close()
            return
        conn.used = True
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)
        self._wake_one()
        if self._sweeper is None:
            self._arm_sweeper()

    def closes_after_stream(self) -> None:
        """The upstream closes a connection after a streamed answer although it
        said Keep-Alive: from now on such a connection is not used again."""
        if self.reuse_after_stream:
            self.reuse_after_stream = False
            log.info(
                "upstream %s:%s closes its connection after each streamed answer "
                "(while it says Keep-Alive); not reusing those connections",
                self._host,
                self._port,
            )

    def forget(self, conn: _Connection) -> None:
        """A connection closed: it no longer counts against the limit."""
        if conn.counted:
            conn.counted = False
            self._count -= 1
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _arm_sweeper(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(self.options.keepalive_timeout / 2, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle longer than the keep-alive timeout (oldest are leftmost)."""
        self._sweeper = None
        cutoff = asyncio.get_running_loop().time() - self.options.keepalive_timeout
        while self._idle and self._idle[0].idle_since <= cutoff:
            self._idle.popleft().close()
        if self._idle:
            self._arm_sweeper()

    async def close(self) -> None:
        """Close every connection (at shutdown); requests in flight break off."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            self._idle.pop().close()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()

    # --- requests ----------------------------------------------------------
    def _head(
        self, method: str, target: str, headers: CIMultiDict[str], length: int | None
    ) -> bytes:
        lines = [f"{method} {self._prefix}{target} HTTP/1.1\r\nHost: {self._host_header}\r\n"]
        if self._basic is not None and "Authorization" not in headers:
            lines.append(f"Authorization: {self._basic}\r\n")
        for name, value in headers.items():
            lines.append(f"{name}: {value}\r\n")
        if length is None:
            lines.append("Transfer-Encoding: chunked\r\n\r\n")
        elif length or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(f"Content-Length: {length}\r\n\r\n")
        else:
            lines.append("\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    async def request(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
        *,
        head_timeout: float,
    ) -> HopResponse:
        """Send a request and wait for its response head (``head_timeout``
        seconds from now, connecting included)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + head_timeout
        resend = method in IDEMPOTENT and not isinstance(body, AsyncIterable)
        while True:
            conn = await self._take(deadline)
            try:
                return await self._exchange(conn, method, target, headers, body, deadline)
            except _Stale:
                continue  # nothing was sent on it
            except Disconnected:
                if conn.used and conn.streamed:
                    self.closes_after_stream()  # it closed under this request
                if conn.used and resend:
                    resend = False  # once, on a new connection if need be
                    continue
                raise

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
        deadline: float,
    ) -> HopResponse:
        transport = conn.transport
        assert transport is not None
        if transport.is_closing():
            raise _Stale("the kept-alive connection was closed")
        waiter = conn.start(method)
        timer = asyncio.get_running_loop().call_at(deadline, _head_late, conn, waiter)
        try:
            if body is None or isinstance(body, bytes):
                data = body or b""
                head = self._head(method, target, headers, len(data))
                if len(data) <= _JOIN_LIMIT:
                    transport.write(head + data)
                else:
                    transport.writelines((head, data))
                return await waiter
            transport.write(self._head(method, target, headers, None))
            return await self._stream_body(conn, body, waiter)
        except BaseException:
            # Cancelled (the client left), timed out, or failed: the upstream
            # must not go on with this request, nor the connection be reused.
            conn.reusable = False
            if conn._head_waiter is waiter:
                conn._head_waiter = None
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                waiter.result().close()
            conn.close()
            raise
        finally:
            timer.cancel()

    async def _stream_body(
        self,
        conn: _Connection,
        body: AsyncIterable[bytes],
        waiter: asyncio.Future[HopResponse],
    ) -> HopResponse:
        """Send a streamed body chunked, unless the answer comes first."""
        sender = asyncio.ensure_future(self._send_chunks(conn, body))
        try:
            await asyncio.wait((sender, waiter), return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                await sender  # raises if reading the client's body failed
                return await waiter
            if not sender.done():
                conn.reusable = False  # answered before the body was sent whole
            return waiter.result()
        finally:
            if not sender.done():
                sender.cancel()
            elif not sender.cancelled():
                sender.exception()  # seen (an answer came first): never "never retrieved"

    async def _send_chunks(self, conn: _Connection, body: AsyncIterable[bytes]) -> None:
        transport = conn.transport
        assert transport is not None
        try:
            async for chunk in body:
                if chunk:
                    transport.writelines((f"{len(chunk):x}\r\n".encode(), chunk, b"\r\n"))
                    await conn.drain()
        except HopError:
            raise
        except Exception as exc:
            raise RequestBodyError("the request body could not be read") from exc
        transport.write(b"0\r\n\r\n")


class _Stale(Disconnected):
    """A kept-alive connection found closed before anything was written to it."""


class _Unasked(Exception):
    """Raised from the parser's callback when a response begins that nobody asked for."""


def _head_late(conn: _Connection, waiter: asyncio.Future[HopResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(HeadTimeout("no response head in time"))
        if conn._head_waiter is waiter:
            conn._head_waiter = None


def _check_peer(conn: _Connection, check: Callable[[bytes | None], object]) -> None:
    """Nothing has been sent yet: a refused certificate is a connection that failed."""
    assert conn.transport is not None
    tls = conn.transport.get_extra_info("ssl_object")
    der = tls.getpeercert(binary_form=True) if tls is not None else None
    try:
        check(der)
    except Exception as exc:
        raise ConnectFailed(
            f"refused the certificate it presented: {exc}", refused_certificate=True
        ) from None


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or type(exc).__name__})"
    return exc.strerror or str(exc) or type(exc).__name__
