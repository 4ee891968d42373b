"""Live counters of the gateway's own work.

Kept as plain integers on the event loop (no locks needed) so the hot path
pays nothing; /readyz, the mDNS load field and /metrics read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class GatewayStats:
    active_requests: int = 0  # upstream requests in flight
    active_streams: int = 0  # responses currently being relayed
    client_disconnects_total: int = 0  # relays cut short by the client
    upstream_failures_total: int = 0  # upstream broke or stalled mid-body
    upstream_up: bool | None = None  # last contact with the upstream worked (None: no contact)
    # Recent seconds to an inference answer's first byte from this node's own
    # upstreams (a moving average; None: none yet): what the fog's members
    # are told, and what placement weighs a wait here against.
    first_token: float | None = None
    # Requests handed to each member of the fog (and served there), and those
    # each member handed to this node, by the member's name: the Fog card.
    fog_handed: dict[str, int] = field(default_factory=dict)
    fog_received: dict[str, int] = field(default_factory=dict)

    def first_token_after(self, seconds: float) -> None:
        known = self.first_token
        self.first_token = seconds if known is None else 0.8 * known + 0.2 * seconds


STATS = web.AppKey("fognode.stats", GatewayStats)
