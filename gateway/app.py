"""The gateway, assembled: the request pipeline in the order a request meets it.

    client ─TLS─▶ context ▶ errors ▶ target ▶ access ▶ body ▶ usage ▶ admission ▶ proxy ─▶ upstream
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

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..fog.state import PeerState
from ..routing.affinity import ConversationMemory
from ..usage.ledger import QuotaLedger
from .auth_setup import build_authorizer
from .config.identity import node_id
from .config.network import local_url
from .config.settings import Settings
from .core.drain import DRAIN, Drain
from .options import (
    admission_from,
    fog_options,
    renewal_options,
    session_options,
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
from .pipeline.admission import Admission, AdmissionCollector, AdmissionControl, setup_admission
from .pipeline.context import setup_request_context
from .pipeline.keepalive import HeartbeatOptions
from .pipeline.openai_errors import setup_openai_errors
from .pipeline.peers import setup_peers
from .pipeline.placement import Placement
from .pipeline.proxy import setup_proxy
from .pipeline.quotas import setup_quotas
from .pipeline.relay import RelayOptions
from .pipeline.request_target import setup_request_target
from .pipeline.validation import BodyLimits, setup_validation
from .telemetry.activity import Activity
from .telemetry.metrics import Metrics
from .telemetry.stats import STATS, GatewayStats
from .transport.cert_renewal import CertificateKeeper, setup_certificate_renewal
from .transport.peer_tls import PeerTls
from .transport.slow_clients import HEADER_FIELD_LIMIT, REQUEST_LINE_LIMIT
from .transport.tls import TlsTerminator
from .upstreams.peers import FOG, FogPeers
from .upstreams.pool import UpstreamPool


def create_app(
    settings: Settings,
    *,
    authorizer: Authorizer | None = None,
    tls: TlsTerminator | None = None,
    admission: AdmissionControl[Any] | None = None,
    ledger: QuotaLedger | None = None,
    memory: ConversationMemory | None = None,
    throttle: SignInThrottle | None = None,
    probe_elsewhere: Callable[[], Awaitable[None]] | None = None,
    peers: PeerTls | None = None,
    fog_state: Callable[[], Awaitable[PeerState]] | None = None,
    set_drain: Callable[[bool], Awaitable[None]] | None = None,
) -> web.Application:
    """The app. ``admission``, ``ledger``, ``memory``, ``throttle`` and
    ``probe_elsewhere``: what admits requests, checks quotas, remembers which
    upstream served a conversation, slows down sign-in guesses and probes the
    upstreams when this process does not hold the node's own (a worker
    process, whose supervisor does; it also counts admission and writes the
    usage records then). ``peers``: this node's peer credentials, when it
    is a member of a fog (the app then also serves the peer port's requests,
    and hands requests to members); ``fog_state`` and ``set_drain``: this
    node's state as members see it and how to drain it, when this process
    does not hold the node's admission (a worker: its supervisor does)."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args={"max_field_size": HEADER_FIELD_LIMIT, "max_line_size": REQUEST_LINE_LIMIT},
    )
    stats = app[STATS] = GatewayStats()
    held: Admission | None = None  # the node's Admission, when this process holds it
    if admission is None:
        admission = held = admission_from(settings)
    metrics = Metrics(stats, [AdmissionCollector(held)] if held is not None else [])
    urls = settings.upstream_urls or [settings.upstream_base]
    pool = UpstreamPool(
        urls, upstream_options(settings), memory=memory, probe_elsewhere=probe_elsewhere
    )
    # The operator's pages: sessions for signed-in browsers, and what the status page shows.
    sessions = (
        BrowserSessions(session_options(settings), throttle) if settings.status_page else None
    )
    activity = Activity() if settings.status_page else None
    # Draining (core/drain.py); a worker follows its supervisor's flag.
    drain = app[DRAIN] = Drain()
    # The fog's members as upstreams of another kind (upstreams/peers.py).
    fog: FogPeers | None = None
    if peers is not None:
        fog = app[FOG] = FogPeers(fog_options(settings), peers, upstream_options(settings), drain)
        if fog_state is None:
            assert held is not None, "a worker is given its supervisor's state"
            fog_state = NodeState(
                fog.options.own_id, peers.name, held, pool, drain, lambda: stats.first_token
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
    # 6. Usage and quotas: a user over budget is refused here, before the queue;
    #    every inference request that passes is metered and recorded once.
    accounting = (
        setup_quotas(
            app,
            usage_options(settings),
            metrics,
            node_id=functools.partial(node_id, settings),
            ledger=ledger,
        )
        if settings.usage_accounting
        else None
    )
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
    setup_fog_pages(app, drain, fog, set_drain=set_drain)
    setup_metrics(app, metrics, public=settings.metrics_public)
    setup_openapi(app)
    if tls is not None:
        setup_certificate_renewal(app, CertificateKeeper(tls, renewal_options(settings)))
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
        )
    return app
