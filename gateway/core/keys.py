"""What the stages leave on a request for the stages after them, and names
every layer shares.

A leaf: the stages, the relay, the pages and the connection guard import
these without importing each other. Each key says which stage sets it;
that stage owns it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ...auth.principal import Principal
from ...fog.hop import Forwarded

REQUEST_ID_HEADER = "X-Request-ID"
SERVER_NAME = "fognode"  # not "Python/3.x aiohttp/3.y": versions help attackers more

REQUEST_ID = web.RequestKey("fognode.request_id", str)
# Who called (set by the access stage), for the access log.
PRINCIPAL = web.RequestKey("fognode.principal", Principal)
# Body bytes and chunks relayed to the client (set by the relay; aiohttp's own
# count includes the header block).
BODY_BYTES = web.RequestKey("fognode.body_bytes", int)
RELAYED_CHUNKS = web.RequestKey("fognode.relayed_chunks", int)
# Why the request failed, in words, set by whichever stage answered the error
# (errors.py, or the relay for a failure inside a stream): for the status
# page's latest errors (activity.py).
FAILURE = web.RequestKey("fognode.failure", str)


@dataclass(frozen=True)
class Routed:
    """Which of several upstreams, or which member of the fog, took the
    request, and why (routing/order.py)."""

    upstream: str  # its URL, without a password: for the operator's log only
    position: int  # 1-based in FOGNODE_UPSTREAM_URLS: what the client is told (0: a member)
    reasons: str  # "loaded,affinity", "peer-loaded"
    peer: str | None = None  # the member's name, when a member of the fog took it

    @property
    def label(self) -> str:
        """What ``X-Fognode-Upstream`` says: a position, or ``peer <name>``."""
        return f"peer {self.peer}" if self.peer is not None else str(self.position)


# Set by the proxy when it chose among several upstreams.
ROUTED = web.RequestKey("fognode.routed", Routed)

# Set by the peers stage on a request a fog member handed to this node (on
# the peer port, over mutual TLS): it is served here, never forwarded again,
# and recorded by the entry node, not here.
FORWARDED = web.RequestKey("fognode.forwarded", Forwarded)

# Set on a request that is routine and frequent (a fog member asking for this
# node's state, every second or two): when it succeeds, no access-log line and
# no entry in the status page's activity; /metrics still counts it.
ROUTINE = web.RequestKey("fognode.routine", bool)


@dataclass(frozen=True, slots=True)
class Share:
    """The caller's share of the node for one request (set by the shares
    stage): the tier its quotas come from, and the priority class it waits
    in for a slot."""

    tier: str | None
    priority: str


# Set by the shares stage on every inference request.
SHARE = web.RequestKey("fognode.share", Share)
