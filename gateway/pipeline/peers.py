"""The peers stage: requests that arrive on the peer port, from members of the fog.

The node listens on a second port for its peers (mutual TLS, node
certificates of this fog only: transport/peer_tls.py). The same app serves
both ports, so a request a member hands over meets the same pipeline as a
phone's; this stage, before access is decided, tells the two apart by the
connection it came on, and for the peer port

* checks the certificate the member presented (OpenSSL checked the chain
  and clientAuth in the handshake; the marker is checked here, once per
  certificate), and refuses anyone else with 403;
* serves only what members ask of each other: the routes a request may be
  forwarded on, and ``GET /fog/state``; anything else is 404 there, and
  ``/fog/state`` is 404 on the phones' port;
* reads the entry node's assertion of who the caller is (fog/hop.py) and
  marks the request as forwarded (``FORWARDED``): the access stage takes
  the asserted caller, the usage stage records nothing (the entry node
  records it, once), admission gives it a slot of this node only (the
  entry counted the user), and nothing forwards it again.

On the phones' port the fog's headers mean nothing: they are not read, and
the proxy drops them before anything goes upstream.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter

from ...auth.principal import Access, Principal
from ...certs.peers import PeerRefused
from ...fog.hop import Forwarded
from ...fog.state import PeerState
from ..core.errors import GatewayError
from ..core.keys import FORWARDED, PRINCIPAL, ROUTINE
from ..telemetry.metrics import Metrics
from ..telemetry.stats import GatewayStats
from ..upstreams.peers import FogPeers
from .routes import RouteSpec, add_route, spec_for

log = logging.getLogger("fognode.fog")

STATE_PATH = "/fog/state"


def forwardable(spec: RouteSpec) -> bool:
    """Routes a request may be handed to a member on: OpenAI's inference routes
    (Ollama's native ones stay here: a member may not run Ollama)."""
    return spec.limited and not spec.native


def setup_peers(
    app: web.Application,
    fog: FogPeers,
    metrics: Metrics,
    stats: GatewayStats,
    state: Callable[[], Awaitable[PeerState]],
) -> None:
    """Install the stage and ``GET /fog/state`` (``state``: this node's, as its
    members are told)."""
    server_context = fog.tls.server
    received = Counter(
        "fognode_fog_received",
        "Requests members of the fog handed to this node, by the entry node's name.",
        ["peer"],
        registry=metrics.registry,
    )

    @web.middleware
    async def peers_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = spec_for(request)
        tls = request.transport.get_extra_info("ssl_object") if request.transport else None
        if not (isinstance(tls, ssl.SSLObject) and tls.context is server_context):
            if spec is not None and spec.peer_only:
                raise GatewayError(404, "Not found.", code="not_found")
            return await handler(request)
        try:
            identity = fog.tls.check(tls.getpeercert(binary_form=True))
        except PeerRefused as exc:
            log.warning("refused a request on the peer port from %s: %s", request.remote, exc)
            raise GatewayError(
                403, "Not a member of this fog.", type="permission_error", code="not_a_member"
            ) from None
        if spec is None or not (spec.peer_only or forwardable(spec)):
            raise GatewayError(404, "Not served on the peer port.", code="not_found")
        if spec.peer_only:
            request[ROUTINE] = True  # every member asks every second or two
            return await handler(request)
        try:
            forwarded = Forwarded.from_headers(request.headers)
        except ValueError as exc:
            raise GatewayError(400, f"Bad forwarded request: {exc}.", code="bad_hop") from None
        if forwarded is None:
            raise GatewayError(
                400, "The peer port takes forwarded requests only.", code="not_forwarded"
            )
        request[FORWARDED] = forwarded
        request[PRINCIPAL] = Principal(uid=forwarded.uid, kind=forwarded.kind)
        received.labels(identity.name).inc()
        counts = stats.fog_received
        counts[identity.name] = counts.get(identity.name, 0) + 1
        return await handler(request)

    async def fog_state(request: web.Request) -> web.Response:
        body = (await state()).to_json()
        return web.Response(body=body, content_type="application/json")

    app.middlewares.append(peers_stage)
    add_route(app, RouteSpec("GET", STATE_PATH, Access.PUBLIC, peer_only=True), fog_state)
