"""The port the workers share: picked once by the supervisor, one socket per worker.

Every worker listens on a socket of its own bound to the same address with
SO_REUSEPORT, so the kernel spreads new connections over the workers (by a
hash of the connection's addresses) instead of waking every worker for
each one. The supervisor makes those sockets and hands them over (the
worker only calls ``listen``), for three reasons:

* port 0 (tests, or "any free port") is resolved once, by the first bind,
  and every later socket binds the port that came out;
* the supervisor holds one more socket on the port for as long as it runs,
  bound but never listening (so it gets no connections): a worker that
  restarts finds its port still reserved, never taken by another program;
* binding a port below 1024 needs CAP_NET_BIND_SERVICE, which the
  supervisor has (systemd's ambient capability, the Docker image's file
  capability); the workers need nothing beyond the socket they are given.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

ATTEMPTS = 8  # tries at a free port that is free in every address family


def _bound(family: int, address: tuple[object, ...]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # As asyncio does: an IPv6 wildcard socket beside the IPv4 one.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class SharedPort:
    """The reservation: one bound socket per address the host resolves to."""

    host: str | None  # None: every interface, IPv4 and IPv6 (asyncio's meaning)
    port: int
    _addresses: list[tuple[int, tuple[object, ...]]] = field(default_factory=list)
    _held: list[socket.socket] = field(default_factory=list)

    @classmethod
    def reserve(cls, host: str | None, port: int) -> SharedPort:
        """Bind the port (0: a free one, the same in every family); raises OSError."""
        infos = socket.getaddrinfo(
            host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        addresses: list[tuple[int, tuple[object, ...]]] = []
        for info in infos:
            found = (int(info[0]), tuple(info[4]))
            if found not in addresses:
                addresses.append(found)
        for attempt in range(ATTEMPTS):
            held: list[socket.socket] = []
            chosen = port
            try:
                for family, address in addresses:
                    held.append(_bound(family, (address[0], chosen, *address[2:])))
                    chosen = int(held[0].getsockname()[1])
            except OSError:
                for sock in held:
                    sock.close()
                # Port 0 got a port that another family has in use: try another.
                if port != 0 or attempt == ATTEMPTS - 1 or len(held) == 0:
                    raise
                continue
            return cls(host, chosen, addresses, held)
        raise AssertionError("unreachable")  # pragma: no cover

    def sockets(self) -> list[socket.socket]:
        """New bound sockets on the port for one worker, to listen on."""
        made: list[socket.socket] = []
        try:
            for family, address in self._addresses:
                made.append(_bound(family, (address[0], self.port, *address[2:])))
        except BaseException:
            for sock in made:
                sock.close()
            raise
        return made

    def close(self) -> None:
        for sock in self._held:
            sock.close()
        self._held.clear()
