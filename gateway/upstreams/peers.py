"""The fog's members as upstreams of another kind: whom to hand a request to.

What this process knows of the members is what the node's membership
service found (node/fog.py: mutual TLS, their state every second or two):
in one process it hands its findings here directly, with worker processes
the supervisor's service sends them to every worker (``fog`` notices) and
each follows them (:meth:`FogPeers.follow`). Which member, if any, takes a
request is the routing rule's (routing/order.py, :func:`rank_peers`): this
module only turns members into its options and its answer into choices.

Each member is reached through an :class:`Upstream` of its own: kept-alive
connections to its peer port, mutual TLS with this node's node
certificate, and a look at the certificate the member presents before
anything is sent (a member must hold a node certificate of this fog, not
just any certificate of its CA). A member whose request fails before its
first byte is left out here at once, and the service is told, so that it
asks the member again before it counts it back in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from aiohttp import web

from ...fog.members import CandidateView, Member
from ...routing.order import PeerOption, rank_peers
from ..core.drain import Drain
from ..transport.peer_tls import PeerTls
from .upstream import Upstream, UpstreamOptions

log = logging.getLogger("fognode.fog")


@dataclass(frozen=True)
class FogOptions:
    own_id: str  # this node's id: the hop header names it
    margin: float  # seconds a member must beat this node by (routing/order.py)
    stale_after: float  # members a worker was told of count this long without news


@dataclass(frozen=True)
class PeerChoice:
    member: Member
    reasons: tuple[str, ...]  # routing/order.py's words: peer-loaded, peer-free, ...


class FogPeers:
    """This process's view of the members, and its connections to them."""

    def __init__(
        self,
        options: FogOptions,
        tls: PeerTls,
        upstream: UpstreamOptions,
        drain: Drain,
    ) -> None:
        self.options = options
        self.tls = tls
        self.drain = drain
        # Member upstreams: kept-alive mutual-TLS connections to their peer ports.
        self._upstream_options = replace(
            upstream,
            kind="fognode",
            api_key=None,
            max_concurrent=0,
            tls=tls.client,
            check_peer=tls.check,
        )
        self.members: list[Member] = []
        # Every candidate the service knows, members or not (the status page).
        self.candidates: list[CandidateView] = []
        self._followed_at = 0.0
        self._upstreams: dict[str, Upstream] = {}
        self._out: set[str] = set()  # failed here since the last news
        # Tell the node's membership service of a member that failed a request.
        self.on_failure: Callable[[str, str], None] | None = None

    def follow(self, members: list[Member], candidates: list[CandidateView]) -> None:
        """The membership service's latest findings (this process's or the supervisor's)."""
        self.members, self.candidates = members, candidates
        self._followed_at = time.monotonic()
        self._out.clear()

    def current(self) -> list[Member]:
        """Members placement may use: none when the news is too old (the
        supervisor stopped telling), none that failed here since."""
        if time.monotonic() - self._followed_at > self.options.stale_after:
            return []
        return [m for m in self.members if m.address not in self._out]

    def has(self, model: str) -> bool:
        """Some member has the model (a request for it is never a 404 here)."""
        return any(m.state.has(model) and not m.state.draining for m in self.current())

    def route(self, model: str, *, here: float | None) -> list[PeerChoice]:
        """The members to try for a request for ``model``, best first (routing/
        order.py); ``here``: when this node would start it (None: it cannot)."""
        members = self.current()
        options = [
            PeerOption(
                has_model=m.state.has(model),
                loaded=m.state.holds(model),
                free=m.state.free_slots,
                wait=m.state.wait,
                ttft=m.state.ttft,
                draining=m.state.draining,
            )
            for m in members
        ]
        ranked = rank_peers(options, here=here, margin=self.options.margin)
        return [PeerChoice(members[r.position], r.reasons) for r in ranked]

    async def upstream(self, member: Member) -> Upstream:
        """The connections to a member's peer port (made at its first use)."""
        upstream = self._upstreams.get(member.address)
        if upstream is None:
            upstream = Upstream(f"https://{member.address}", self._upstream_options)
            await upstream.start()
            self._upstreams[member.address] = upstream
        return upstream

    def failed(self, member: Member, reason: str) -> None:
        """A request to it failed before its first byte: out here until the
        service has asked it again."""
        log.warning("fog member %s (%s) failed: %s", member.identity, member.address, reason)
        self._out.add(member.address)
        if self.on_failure is not None:
            self.on_failure(member.address, reason)

    async def close(self) -> None:
        for upstream in self._upstreams.values():
            await upstream.close()
        self._upstreams.clear()


# The fog, on the app, where this node is a member (None otherwise).
FOG = web.AppKey("fognode.fog", FogPeers)
