"""The fog from the operator's side, and this node's state as members see it.

* :class:`NodeState`: what this node tells the fog's members about itself
  (fog/state.py's message), from what the node's own stages know: the
  upstream pool (models, which are loaded), admission (slots, queue, the
  wait a new request would have), the time to a first token lately, and
  whether it drains. It is built where the node's admission is held (one
  process, or the supervisor of worker processes).
* ``POST /admin/drain`` (``{"draining": true|false}``) and ``GET
  /admin/drain``: what ``fognode drain`` calls (core/drain.py says what
  draining does); ``GET /admin/fog``: the members and every candidate, as
  the membership service last found them (``fognode fog`` and the status
  page's Fog card show the same).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ... import safejson
from ...auth.principal import Access
from ...fog.state import PeerState
from .. import __version__
from ..core.drain import Drain
from ..core.errors import GatewayError
from ..pipeline.admission import Admission
from ..pipeline.routes import RouteSpec, add_route
from ..pipeline.validation import BodyLimits, read_body
from ..upstreams.peers import FogPeers
from ..upstreams.pool import UpstreamPool


@dataclass
class NodeState:
    """This node's state for its members, from the node's admission and pool."""

    own_id: str
    name: str
    admission: Admission
    pool: UpstreamPool
    drain: Drain
    first_token: Callable[[], float | None]

    def state(self) -> PeerState:
        admission = self.admission
        active, queued, capacity = admission.active, admission.queued, admission.capacity
        return PeerState(
            node=self.own_id,
            name=self.name or socket.gethostname(),
            version=__version__,
            models=tuple(self.pool.known_models()),
            loaded=tuple(self.pool.hot_models()),
            capacity=capacity,
            active=active,
            queued=queued,
            free_slots=max(0, capacity - active) if queued == 0 else 0,
            wait=admission.expected_wait(),
            ttft=self.first_token(),
            draining=self.drain.draining,
        )

    async def current(self) -> PeerState:
        return self.state()


DRAIN_BODY = BodyLimits(max_bytes=1024, timeout=10.0)


def drain_view(drain: Drain) -> dict[str, Any]:
    return {"draining": drain.draining, "since": drain.since}


def fog_view(fog: FogPeers | None) -> dict[str, Any]:
    """The members and candidates as JSON (``GET /admin/fog``, ``fognode fog``)."""
    if fog is None:
        return {"fog": False, "members": [], "candidates": []}
    return {
        "fog": True,
        "name": fog.tls.name,
        "members": [m.to_json() for m in fog.current()],
        "candidates": [
            {
                "address": c.address,
                "standing": c.standing.value,
                "sources": list(c.sources),
                "identity": c.identity,
                "node": c.state.node if c.state is not None else None,
                "age": c.age,
                "last_error": c.last_error,
            }
            for c in fog.candidates
        ],
    }


def setup_fog_pages(
    app: web.Application,
    drain: Drain,
    fog: FogPeers | None,
    *,
    set_drain: Callable[[bool], Awaitable[None]] | None = None,
) -> None:
    """``set_drain``: how this process changes the node's flag (a worker asks
    its supervisor, which holds it); default: the flag here."""

    async def change(draining: bool) -> None:
        if set_drain is not None:
            await set_drain(draining)
        else:
            await drain.set(draining)

    async def drain_get(request: web.Request) -> web.Response:
        return web.json_response(drain_view(drain))

    async def drain_post(request: web.Request) -> web.Response:
        raw = await read_body(request, DRAIN_BODY)
        wanted = True
        if raw.strip():
            try:
                body = safejson.loads(raw)
            except ValueError:
                raise GatewayError(400, "The body is not JSON.", code="invalid_json") from None
            value = body.get("draining") if isinstance(body, dict) else None
            if not isinstance(value, bool):
                raise GatewayError(
                    400, 'Send {"draining": true} or false.', param="draining", code="invalid"
                )
            wanted = value
        await change(wanted)
        return web.json_response(drain_view(drain))

    async def fog_get(request: web.Request) -> web.Response:
        return web.json_response(fog_view(fog))

    add_route(app, RouteSpec("GET", "/admin/drain", Access.ADMIN), drain_get)
    add_route(app, RouteSpec("POST", "/admin/drain", Access.ADMIN), drain_post)
    add_route(app, RouteSpec("GET", "/admin/fog", Access.ADMIN), fog_get)
