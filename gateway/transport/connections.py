"""Connections: admitted, capped, reaped when silent, and TLS started here.

Before a request exists there is a connection, and connections cost a file
descriptor each. A host on the LAN that opens connections and sends nothing
used to hold them for aiohttp's keep-alive timeout (an hour): about a
thousand took a node with the common 1,024-descriptor limit offline,
/healthz included, without any credential. The guard owns every accepted
connection from its first moment:

* it raises the soft descriptor limit to the hard one at start (and says
  what it became), and keeps a reserve below it for the upstream pool, the
  listening sockets, mDNS and files, so ``accept()`` never fails;
* it caps connections in total (``max_connections``, by default the
  descriptor limit minus that reserve) and per client address
  (``max_connections_per_client``; an IPv6 client counts by its /64, which
  one host can fill with addresses);
* a connection that has not sent the first byte of a request within
  ``client_first_byte_timeout`` (TLS handshake included) is closed, and an
  idle keep-alive connection lasts ``keepalive_timeout``;
* at a cap, the oldest connection that is doing nothing (silent since it
  connected first, then idle keep-alive) makes room, as nginx reuses idle
  connections when it runs out; only when every connection is busy with a
  request is the new one refused. So a flood of silent connections cannot
  keep out a client that sends its request, and probes keep answering;
* a connection refused, or moved aside while still silent, is answered
  rather than reset while the node has room for it (the total cap counts
  it): it waits for its request as any other (TLS handshake included) and
  gets a minimal 503 in OpenAI's shape with ``Retry-After``, then a clean
  close. A client that opens many connections at once, over its cap, so
  learns to retry instead of seeing connection errors. Without room, it is
  closed at once (plain HTTP: with the 503 written first).

TLS is started by the guard rather than by ``loop.create_server``: the
connection must be counted (and a silent one reaped) before the handshake,
which a flood never completes. The TLS protocol is asyncio's own with one
change: when a handshake fails, the alert OpenSSL wrote (``protocol_version``
for a TLS 1.0/1.1 client, ``handshake_failure`` for no shared cipher) is sent
before the connection closes; asyncio drops it, and old clients saw a bare
EOF instead of a reason.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import resource
import socket
import ssl
import time
from asyncio import sslproto
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aiohttp import web

from ..core.errors import error_body

log = logging.getLogger("fognode.connections")

# Descriptors kept free for everything that is not a client connection:
# listening sockets, mDNS, the auth step's HTTP pool, log and certificate
# files, threads' pipes. The upstream pool is added on top.
BASE_RESERVE = 64
MIN_CONNECTIONS = 16


class Handler(Protocol):
    """What the guard needs from the HTTP protocol of a connection."""

    gate: Gate | None

    def is_idle(self) -> bool: ...

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def data_received(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    max_per_client: int  # 0: no per-client cap
    first_byte_timeout: float


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the descriptor limit from %d: %s", soft, exc)
        else:
            log.info("descriptor limit raised from %d to %d", soft, target)
            return target
    return soft if soft != resource.RLIM_INFINITY else target


def connection_limits(
    *,
    max_connections: int,
    max_per_client: int,
    first_byte_timeout: float,
    upstream_descriptors: int,
    share: bool = False,
) -> ConnectionLimits:
    """The limits to run with; ``max_connections`` 0 means: what the
    descriptor limit allows, less the reserve. ``share``: these are one
    worker's share of the node's caps, which the node states itself (they
    are logged at DEBUG here, as this process's)."""
    descriptors = raise_descriptor_limit()
    room = descriptors - BASE_RESERVE - upstream_descriptors
    if max_connections <= 0:
        max_connections = max(MIN_CONNECTIONS, room)
    elif max_connections > room:
        log.warning(
            "max_connections=%d leaves too few of the %d descriptors for the upstream pool "
            "(%d) and the rest (%d): accept() may fail under load",
            max_connections,
            descriptors,
            upstream_descriptors,
            BASE_RESERVE,
        )
    log.log(
        logging.DEBUG if share else logging.INFO,
        "client connections%s: at most %d (descriptor limit %d), %s per client address",
        " of this worker" if share else "",
        max_connections,
        descriptors,
        max_per_client or "no cap",
    )
    return ConnectionLimits(max_connections, max_per_client, first_byte_timeout)


def client_key(host: str) -> str:
    """Whom a connection counts against: the address, an IPv6 one by its /64."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _busy_response() -> bytes:
    body = json.dumps(
        error_body(
            "The node has too many open connections; retry in a moment.",
            status=503,
            code="too_many_connections",
        )
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        "Server: fognode\r\n\r\n"
    )
    return head.encode() + body


_BUSY = _busy_response()
# How long a refused connection is kept to read what else its client sends
# after the 503, so that closing it does not reset the answer away.
LINGER = 2.0


class _Refusal(asyncio.Protocol):
    """The HTTP protocol of a refused connection: its first request gets the 503.

    Over plain TCP the write side is shut after the answer and the rest of
    the request is read and dropped until the client closes (or ``LINGER``),
    so that no unread byte turns the close into a reset; over TLS the answer
    is followed by close_notify.
    """

    def __init__(self) -> None:
        self.gate: Gate | None = None
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def is_idle(self) -> bool:
        return False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self._timer is not None or transport.is_closing():
            return  # answered already: the rest of the request is dropped
        if self.gate is not None:
            self.gate.first_byte()
        transport.write(_BUSY)
        self._timer = asyncio.get_running_loop().call_later(LINGER, transport.close)
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.gate is not None:
            self.gate.lost()


class _AlertingSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol, but a failed handshake sends its alert, and the
    guard hears of the connection's end even when the handshake never
    finished (the HTTP protocol is not told then).

    Its receive buffer is 32 KiB, not asyncio's 256 KiB: the buffer is a
    zero-filled bytearray made per connection, so all of it is resident
    memory for as long as the connection is open (256 KiB per open TLS
    stream, measured in bench/). A TLS record is at most 16 KiB plus its
    header, so 32 KiB still takes whole records; only bulk uploads pay a
    few more reads.
    """

    max_size = 32 * 1024

    def __init__(self, gate: Gate, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            self._process_outgoing()  # type: ignore[attr-defined]
        super()._on_handshake_complete(handshake_exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._gate.lost()


class Gate(asyncio.Protocol):
    """The first protocol of every accepted connection.

    It admits the connection and starts its first-byte timer; only when the
    first bytes arrive does it build the HTTP protocol (and TLS under it) and
    hand the transport over. A silent connection so costs a small object,
    not an HTTP protocol and a 256 KiB TLS buffer.
    """

    def __init__(
        self,
        guard: ConnectionGuard,
        tls: ssl.SSLContext | None,
        make_handler: Callable[[], Handler] | None = None,
    ) -> None:
        self.guard = guard
        self.tls = tls
        # The HTTP protocol of the site this connection came in on (a guard
        # shared by several servers); the guard's own server by default.
        self.make_handler = make_handler or guard.make_handler
        self.transport: asyncio.Transport | None = None
        self.handler: Handler | None = None
        self.client = ""
        self.spoke = False  # the first byte of an HTTP request arrived
        self.refused = False  # answered with a 503 when it speaks (_Refusal)
        self._timer: asyncio.TimerHandle | None = None
        self._gone = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's TCP transport (uvloop's is no asyncio.Transport subclass).
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client = client_key(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self.guard.admit(self) and not self.guard.set_aside(self):
            if self.tls is None:
                transport.write(_BUSY)
            transport.close()
            return
        self._timer = asyncio.get_running_loop().call_later(
            self.guard.limits.first_byte_timeout, self._silent
        )

    def data_received(self, data: bytes) -> None:
        """The first bytes: build the protocols and pass the bytes on."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        handler: Handler = _Refusal() if self.refused else self.make_handler()
        handler.gate = self
        self.handler = handler
        if self.tls is None:
            transport.set_protocol(handler)  # type: ignore[arg-type]
            handler.connection_made(transport)
            handler.data_received(data)
            return
        tls = _AlertingSSLProtocol(
            self,
            asyncio.get_running_loop(),
            handler,
            self.tls,
            None,
            server_side=True,
            ssl_handshake_timeout=self.guard.limits.first_byte_timeout,
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)
        view = memoryview(data)
        while view and not transport.is_closing():
            buffer = tls.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            tls.buffer_updated(size)
            view = view[size:]

    def eof_received(self) -> bool:
        return False  # closed before a byte: close our side too

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost()  # closed while still ours (silent, refused or reaped)

    def first_byte(self) -> None:
        """The HTTP protocol saw the first byte of a request."""
        if not self.spoke:
            self.spoke = True
            self._cancel_timer()

    def idle(self) -> bool:
        """May be closed to make room: no request in progress."""
        return self.handler is None or not self.spoke or self.handler.is_idle()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def lost(self) -> None:
        if not self._gone:
            self._gone = True
            self._cancel_timer()
            self.guard.release(self)

    def _silent(self) -> None:
        self._timer = None
        if not self.spoke:
            self.guard.reaped_total += 1
            self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class ConnectionGuard:
    """Counts, caps and reaps the connections of one server (all its sockets)."""

    def __init__(self, limits: ConnectionLimits, make_handler: Callable[[], Handler]) -> None:
        self.limits = limits
        self.make_handler = make_handler
        self._open: OrderedDict[Gate, None] = OrderedDict()  # oldest first
        self._by_client: dict[str, OrderedDict[Gate, None]] = {}
        # Refused or moved aside, waiting to be answered with a 503 (Gate.refused).
        self._aside: dict[Gate, None] = {}
        self.refused_total = 0
        self.evicted_total = 0
        self.reaped_total = 0
        self._last_warning = 0.0

    def __len__(self) -> int:
        return len(self._open)

    def protocol_factory(
        self, tls: ssl.SSLContext | None, make_handler: Callable[[], Handler] | None = None
    ) -> Callable[[], Gate]:
        return lambda: Gate(self, tls, make_handler)

    def set_aside(self, gate: Gate) -> bool:
        """A refused connection, or one moved aside before it spoke, answered
        with the 503 when it speaks, if the node has room for it (the total
        cap counts it); False: no room, close it now."""
        if len(self._open) + len(self._aside) >= self.limits.max_connections:
            return False
        gate.refused = True
        self._aside[gate] = None
        return True

    def admit(self, gate: Gate) -> bool:
        """Make room for a new connection, or refuse it."""
        mine = self._by_client.get(gate.client, OrderedDict())
        cap = self.limits.max_per_client
        if cap and len(mine) >= cap and not self._evict(mine, f"client {gate.client} at its cap"):
            return self._refuse(f"client {gate.client} has {len(mine)} busy connections")
        full = len(self._open) >= self.limits.max_connections
        if full and not self._evict(self._open, "connection cap reached"):
            return self._refuse(f"all {len(self._open)} connections are busy")
        self._open[gate] = None
        self._by_client.setdefault(gate.client, OrderedDict())[gate] = None
        return True

    def release(self, gate: Gate) -> None:
        self._aside.pop(gate, None)
        self._open.pop(gate, None)
        mine = self._by_client.get(gate.client)
        if mine is not None:
            mine.pop(gate, None)
            if not mine:
                del self._by_client[gate.client]

    def close_all(self) -> None:
        """At shutdown: what aiohttp's server does not know of (handshakes
        under way, refused connections) is closed too."""
        for gate in [*self._open, *self._aside]:
            gate.abort()

    def _evict(self, among: OrderedDict[Gate, None], why: str) -> bool:
        victim = next((g for g in among if not g.spoke), None)
        if victim is None:
            victim = next((g for g in among if g.idle()), None)
        if victim is None:
            return False
        self.evicted_total += 1
        self._warn(f"{why}: closing an idle connection from {victim.client}")
        self.release(victim)
        # One that has not spoken yet may be a client's request on its way:
        # it gets the 503 rather than a reset, where there is room.
        if victim.handler is not None or not self.set_aside(victim):
            victim.abort()
        return True

    def _refuse(self, why: str) -> bool:
        self.refused_total += 1
        self._warn(f"refusing a connection: {why}")
        return False

    def _warn(self, message: str) -> None:
        # A flood would otherwise write a line per connection.
        now = time.monotonic()
        if now - self._last_warning >= 10:
            self._last_warning = now
            log.warning(
                "%s (%d open; so far %d refused, %d closed to make room, %d silent reaped)",
                message,
                len(self._open),
                self.refused_total,
                self.evicted_total,
                self.reaped_total,
            )


class GuardedTCPSite(web.TCPSite):
    """A TCPSite whose connections go through the runner's guard (and whose
    TLS the guard starts); it binds host and port, or listens on a socket
    bound already (``sock``: a worker's share of the node's port).
    ``make_handler``: the HTTP protocol of this site's server, when the guard
    is shared with another server."""

    def __init__(
        self,
        runner: web.BaseRunner,
        *args: Any,
        guard: ConnectionGuard,
        sock: socket.socket | None = None,
        make_handler: Callable[[], Handler] | None = None,
        **kwargs: Any,
    ):
        super().__init__(runner, *args, **kwargs)
        self._guard = guard
        self._sock = sock
        self._make_handler = make_handler

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        loop = asyncio.get_running_loop()
        factory = self._guard.protocol_factory(self._ssl_context, self._make_handler)
        if self._sock is not None:
            self._server = await loop.create_server(factory, sock=self._sock, backlog=self._backlog)
        else:
            self._server = await loop.create_server(
                factory,
                self._host,
                self._port,
                backlog=self._backlog,
                reuse_address=self._reuse_address,
                reuse_port=self._reuse_port,
            )
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]
        else:
            self._bound_port = self._port

    @property
    def bound_port(self) -> int:
        """The port it listens on (the one asked for, or the one port 0 got)."""
        assert self._bound_port is not None, "start() first"
        return int(self._bound_port)
