"""The gateway, assembled: the request pipeline in the order a request meets it.

    client ─TLS─▶ context ▶ errors ▶ target ▶ access ▶ body ▶ scope ▶ shares ▶ usage
              ▶ model ▶ admission ▶ proxy ─▶ upstream
    client ◀──────────────── relay: each chunk as it arrives (metered) ◀──────────────── upstream

TLS, connection limits and malformed HTTP are handled below the app, on the
connection (server.py). Each stage is a module that installs itself with its
``setup_...`` function (a middleware or routes, and whatever it owns) and
gets what it needs here, as small option objects made from the settings;
this is the only module that knows every stage. The probes, /metrics,
/openapi.json and the operator's pages (status page, sign-in) register their
routes through the same route table, so the access stage guards them too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client.registry import Collector

from ..fog.state import PeerState
from ..usage.ledger import QuotaLedger
from .auth_setup import build_authorizer
from .config.identity import node_id
from .config.network import local_url
from .config.settings import Settings
from .core.drain import DRAIN, Drain
from .options import (
    fog_options,
    quota_options,
    session_options,
    share_options,
    status_options,
    upstream_options,
    usage_options,
)
from .pages.fog import NodeState, setup_fog_pages
from .pages.health import ReadinessOptions, setup_health
from .pages.metrics import setup_metrics
from .pages.openapi import setup_openapi
from .pages.sessions import BrowserSessions, SignInThrottle, setup_sessions
from .pages.status import Listening, setup_status, usage_report
from .pipeline.access import Authorizer, setup_access
from .pipeline.admission import Admission, AdmissionControl, setup_admission
from .pipeline.budgets import UsageEndpoint, setup_usage_endpoint
from .pipeline.context import setup_request_context
from .pipeline.keepalive import HeartbeatOptions
from .pipeline.model_check import setup_model_check
from .pipeline.openai_errors import setup_openai_errors
from .pipeline.peers import setup_peers
from .pipeline.placement import Placement
from .pipeline.proxy import setup_proxy
from .pipeline.quotas import setup_quotas
from .pipeline.relay import RelayOptions
from .pipeline.request_target import setup_request_target
from .pipeline.scopes import setup_scopes
from .pipeline.shares import setup_shares
from .pipeline.validation import BodyLimits, setup_validation
from .telemetry.activity import Activity
from .telemetry.metrics import Metrics
from .telemetry.stats import STATS, GatewayStats
from .transport.cert_renewal import CERTIFICATES, CertificateKeeper
from .transport.peer_tls import PeerTls
from .transport.slow_clients import HEADER_FIELD_LIMIT, REQUEST_LINE_LIMIT
from .transport.tls import TlsTerminator
from .upstreams.peers import FOG, FogPeers
from .upstreams.pool import UpstreamPool


@dataclass(frozen=True)
class NodeParts:
    """What the app asks of the node: the parts there is one of per node.

    One process holds them itself (node/server.py); a worker process gets
    remote twins that ask its supervisor, which holds the node's
    (node/worker.py). Either way the app neither starts nor stops them: the
    node's lifecycle does (node/lifecycle.py).
    """

    admission: AdmissionControl[Any]
    pool: UpstreamPool  # a worker's follows its supervisor's probes
    ledger: QuotaLedger | None = None  # None: usage accounting is off
    throttle: SignInThrottle | None = None  # None: this process's own
    # What else this process counts for the node at scrape time (the node's
    # Admission, its usage writer, the embedded model, where they are held).
    collectors: Sequence[Collector] = ()
    # The node's drain flag (core/drain.py): held here, or a worker's copy of
    # its supervisor's, which ``set_drain`` changes there.
    drain: Drain = field(default_factory=Drain)
    set_drain: Callable[[bool], Awaitable[None]] | None = None
    # The node's peer credentials, when it is a member of a fog (the app then
    # also serves the peer port's requests, and hands requests to members);
    # ``fog_state``: the node's state as members see it, where this process
    # does not hold the node's admission (a worker asks its supervisor).
    peers: PeerTls | None = None
    fog_state: Callable[[], Awaitable[PeerState]] | None = None


def create_app(
    settings: Settings,
    node: NodeParts,
    *,
    authorizer: Authorizer | None = None,
    tls: TlsTerminator | None = None,
    certificates: CertificateKeeper | None = None,
) -> web.Application:
    """The app, on the node's parts. ``tls``: the terminator whose
    certificate the status page shows; ``certificates``: the watch of its
    files, where this process keeps it (the node's lifecycle runs it)."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args={"max_field_size": HEADER_FIELD_LIMIT, "max_line_size": REQUEST_LINE_LIMIT},
    )
    stats = app[STATS] = GatewayStats()
    metrics = Metrics(stats, node.collectors)
    admission, pool, drain = node.admission, node.pool, node.drain
    app[DRAIN] = drain
    # The operator's pages: sessions for signed-in browsers, and what the status page shows.
    sessions = (
        BrowserSessions(session_options(settings), node.throttle) if settings.status_page else None
    )
    activity = Activity() if settings.status_page else None
    # The fog's members as upstreams of another kind (upstreams/peers.py).
    fog: FogPeers | None = None
    fog_state = node.fog_state
    if node.peers is not None:
        fog = app[FOG] = FogPeers(
            fog_options(settings), node.peers, upstream_options(settings), drain
        )
        if fog_state is None:
            assert isinstance(admission, Admission), "a worker is given its supervisor's state"
            fog_state = NodeState(
                fog.options.own_id,
                node.peers.name,
                admission,
                pool,
                drain,
                lambda: stats.first_token,
            ).current

    # 1. A request id for every request; one access-log line and its metrics at the end
    #    (and the requests and errors of the last minutes, for the status page).
    setup_request_context(app, metrics, activity)
    # 2. Whatever a later stage refuses leaves in OpenAI's error shape.
    setup_openai_errors(app)
    # 3. One way to read the request (path, headers) before access is decided on it.
    setup_request_target(app)
    # 3b. A request on the peer port comes from a member of the fog: checked,
    #     its caller asserted by the node it entered (pipeline/peers.py).
    if fog is not None and fog_state is not None:
        setup_peers(app, fog, metrics, stats, fog_state)
    # 4. Who is calling, and may they use this route (auth/ decides). The operator's
    #    pages, and only they, also take a signed-in browser's session (sessions.py).
    setup_access(
        app,
        metrics,
        authorizer=authorizer,
        build=lambda: build_authorizer(settings),
        sessions=sessions,
    )
    # 5. The body, read within limits and checked; before admission on purpose,
    #    so a bad request never takes a place in the queue.
    setup_validation(
        app, BodyLimits(max_bytes=settings.max_body_bytes, timeout=settings.body_timeout)
    )
    #     A key made for some models is refused every other model (403), before
    #     anything counts or queues the request.
    setup_scopes(app)
    # 5b. The caller's share of the node: the tier its budgets come from, the
    #     priority class it waits in.
    shares = setup_shares(app, share_options(settings))
    # 6. Usage and quotas: a user over budget is refused here, before the queue;
    #    every inference request that passes is metered and recorded once.
    accounting = (
        setup_quotas(
            app,
            usage_options(settings),
            metrics,
            node_id=node_id(settings),
            ledger=node.ledger,
        )
        if node.ledger is not None
        else None
    )
    #    What a caller has used and has left, asked before it bites.
    setup_usage_endpoint(app, UsageEndpoint(node.ledger, shares, quota_options(settings)))
    #    A model no upstream has is a plain 404 here, before the queue (recorded as
    #    model_not_found, no tokens).
    setup_model_check(app, pool.who_serves, fog.has if fog is not None else None)
    # 7. Inference waits for a slot (per user, then the node); a streamed request
    #    that waits long gets its headers and heartbeats early. In a fog, a
    #    request that this node cannot start soon goes to a member instead.
    setup_admission(
        app,
        admission,
        HeartbeatOptions(
            after=settings.stream_heartbeat_after, interval=settings.stream_heartbeat_interval
        ),
        Placement(fog, pool, stats) if fog is not None else None,
    )
    # 8. Forward to an upstream; relay the answer back as it arrives.
    setup_proxy(
        app,
        pool,
        RelayOptions(
            idle_timeout=settings.idle_timeout,
            write_timeout=settings.client_write_timeout,
            heartbeat_interval=settings.stream_heartbeat_interval,
        ),
        metrics=metrics,
        stats=stats,
        fog=fog,
    )
    # Beside the pipeline: probes, metrics, the API document, certificate renewal,
    # draining and the fog for the operator.
    setup_health(app, pool, stats, ReadinessOptions(settings.readiness_cache_seconds), drain)
    setup_fog_pages(app, drain, fog, set_drain=node.set_drain)
    setup_metrics(app, metrics, public=settings.metrics_public)
    setup_openapi(app)
    if certificates is not None:
        app[CERTIFICATES] = certificates
    # The operator's pages: sign-in and -out, and the status page at /.
    if sessions is not None and activity is not None:
        setup_sessions(app, sessions, metrics)
        setup_status(
            app,
            status_options(settings),
            sessions=sessions,
            pool=pool,
            admission=admission,
            stats=stats,
            activity=activity,
            listening=Listening(local_url(settings.host, settings.bind_port, tls=settings.tls)),
            tls=tls,
            usage=(
                usage_report(lambda: accounting.store, day_start=accounting.options.quota.day_start)
                if accounting is not None
                else None
            ),
            drain=drain,
            fog=fog,
            budgets=node.ledger.warnings if node.ledger is not None else None,
        )
    return app
