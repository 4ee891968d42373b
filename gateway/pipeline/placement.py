"""Where a request runs: here, or at a member of the fog.

Phones pick a node at random, so the node a request enters is chance; this
is where the entry node sets that right. Admission asks it (admission.py),
since the answer depends on whether a slot is free here:

* a request for a model this node lacks (by its upstreams' last lists),
  any request while it drains, and any while none of its upstreams
  answers, goes to a member that has the model, if there is one: ready
  members first, then the least busy, and it may wait for a slot there;
* otherwise it runs here when a slot is free now; when none is, it goes to
  a member that can start it now and whose first token comes sooner than
  here by a margin (``fog_margin_seconds``), else it waits here as before.

Which member is the routing rule's (routing/order.py, through
upstreams/peers.py); the proxy then tries the members in that order and,
should every one decline before its first byte, the request comes back
here (:class:`MembersDeclined`), where it takes a slot and runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..telemetry.stats import GatewayStats
from ..upstreams.peers import FogPeers, PeerChoice
from ..upstreams.pool import UpstreamPool


@dataclass(frozen=True)
class Handover:
    """The members to hand a request to, best first."""

    choices: list[PeerChoice]
    may_queue: bool  # they may make it wait for a slot (this node cannot serve it)


# Set by admission when the request goes to a member; read by the proxy.
HANDOVER = web.RequestKey("fognode.handover", Handover)


class MembersDeclined(Exception):
    """Every member was tried and none took the request before its first
    byte: nothing reached the client, so it runs here after all."""


class Placement:
    def __init__(self, fog: FogPeers, pool: UpstreamPool, stats: GatewayStats) -> None:
        self.fog, self.pool, self.stats = fog, pool, stats

    def before_admission(self, model: str) -> Handover | None:
        """This node cannot serve it well at all (it drains, lacks the model, or
        none of its upstreams answered their last check): members that have
        the model, whether they can start it now or not."""
        down = all(member.healthy is False for member in self.pool.members)
        if not (self.fog.drain.draining or down or self.pool.lacks_model(model)):
            return None
        choices = self.fog.route(model, here=None)
        return Handover(choices, may_queue=True) if choices else None

    def instead_of_waiting(self, model: str, wait: float) -> Handover | None:
        """No slot is free here (``wait``: seconds until one likely is): a
        member that starts it sooner by the margin, if there is one."""
        here = wait + (self.stats.first_token or 0.0)
        choices = self.fog.route(model, here=here)
        return Handover(choices, may_queue=False) if choices else None
