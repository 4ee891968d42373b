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
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from aiohttp import web

from ..routing.affinity import ConversationMemory
from ..usage.ledger import QuotaLedger
from ..usage.options import Limits, QuotaOptions, StoreOptions
from .access import Authorizer, setup_access
from .activity import Activity
from .admission import Admission, AdmissionControl, setup_admission
from .announce import node_id
from .auth_setup import build_authorizer
from .cert_renewal import CertificateKeeper, RenewalOptions, setup_certificate_renewal
from .context import setup_request_context
from .errors import setup_openai_errors
from .health import ReadinessOptions, setup_health
from .keepalive import HeartbeatOptions
from .metrics import Metrics, setup_metrics
from .network import local_url
from .openapi import setup_openapi
from .proxy import setup_proxy
from .quotas import UsageOptions, setup_quotas
from .relay import RelayOptions
from .request_target import setup_request_target
from .sessions import BrowserSessions, SessionOptions, SignInThrottle, setup_sessions
from .settings import Settings
from .slow_clients import HEADER_FIELD_LIMIT, REQUEST_LINE_LIMIT
from .stats import STATS, GatewayStats
from .status import Listening, StatusOptions, setup_status, usage_report
from .tls import TlsTerminator
from .upstream import UpstreamOptions
from .upstream_pool import UpstreamPool
from .validation import BodyLimits, setup_validation


def create_app(
    settings: Settings,
    *,
    authorizer: Authorizer | None = None,
    tls: TlsTerminator | None = None,
    admission: AdmissionControl[Any] | None = None,
    ledger: QuotaLedger | None = None,
    memory: ConversationMemory | None = None,
    throttle: SignInThrottle | None = None,
    checks: Callable[[], Awaitable[None]] | None = None,
) -> web.Application:
    """The app. ``admission``, ``ledger``, ``memory``, ``throttle`` and
    ``checks``: what admits requests, checks quotas, remembers which upstream
    served a conversation, slows down sign-in guesses and checks the
    upstreams when this process does not hold the node's own (a worker
    process, whose supervisor does; it also counts admission and writes the
    usage records then)."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args={"max_field_size": HEADER_FIELD_LIMIT, "max_line_size": REQUEST_LINE_LIMIT},
    )
    stats = app[STATS] = GatewayStats()
    held: Admission | None = None  # the node's Admission, when this process holds it
    if admission is None:
        admission = held = admission_from(settings)
    metrics = Metrics(stats, held)
    urls = settings.upstream_urls or [settings.upstream_base]
    pool = UpstreamPool(urls, upstream_options(settings), memory=memory, checks=checks)
    # The operator's pages: sessions for signed-in browsers, and what the status page shows.
    sessions = (
        BrowserSessions(session_options(settings), throttle) if settings.status_page else None
    )
    activity = Activity() if settings.status_page else None

    # 1. A request id for every request; one access-log line and its metrics at the end
    #    (and the requests and errors of the last minutes, for the status page).
    setup_request_context(app, metrics, activity)
    # 2. Whatever a later stage refuses leaves in OpenAI's error shape.
    setup_openai_errors(app)
    # 3. One way to read the request (path, headers) before access is decided on it.
    setup_request_target(app)
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
            node=functools.partial(node_id, settings),
            ledger=ledger,
        )
        if settings.usage_accounting
        else None
    )
    # 7. Inference waits for a slot (per user, then the node); a streamed request
    #    that waits long gets its headers and heartbeats early.
    setup_admission(
        app,
        admission,
        HeartbeatOptions(
            after=settings.stream_heartbeat_after, interval=settings.stream_heartbeat_interval
        ),
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
    )
    # Beside the pipeline: probes, metrics, the API document, certificate renewal.
    setup_health(app, pool, stats, ReadinessOptions(settings.readiness_cache_seconds))
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
        )
    return app


# --- the settings each stage gets, as option objects -------------------------------


def admission_from(settings: Settings) -> Admission:
    return Admission(
        max_concurrent=settings.max_concurrent_requests,
        max_queue=settings.max_queued_requests,
        per_user_concurrent=settings.per_user_concurrent_requests,
        per_user_queue=settings.per_user_queued_requests,
        queue_timeout=settings.queue_timeout,
    )


def usage_options(settings: Settings) -> UsageOptions:
    return UsageOptions(
        store=store_options(settings),
        quota=quota_options(settings),
        metrics_per_user=settings.usage_metrics_per_user,
    )


def store_options(settings: Settings) -> StoreOptions:
    url = settings.usage_database_url
    return StoreOptions(
        sqlite_path=None if url is not None else settings.usage_sqlite_path,
        database_url=url.get_secret_value() if url is not None else None,
        flush_records=settings.usage_flush_records,
        flush_seconds=settings.usage_flush_seconds,
        buffer_limit=settings.usage_buffer_limit,
    )


def quota_options(settings: Settings) -> QuotaOptions:
    start = settings.quota_day_start
    return QuotaOptions(
        default=Limits(settings.quota_tokens_per_day, settings.quota_requests_per_minute),
        tiers={
            name: Limits(tier.tokens_per_day, tier.requests_per_minute)
            for name, tier in settings.quota_tiers.items()
        },
        tier_claim=settings.quota_tier_claim,
        api_key_tiers=settings.quota_api_key_tiers,
        day_start=timedelta(hours=start.hour, minutes=start.minute, seconds=start.second),
        default_completion_tokens=settings.quota_default_completion_tokens,
    )


# Connections per upstream beyond the admitted requests: what takes no slot
# (model lists, /api/show, model management, the pool's own checks).
UNADMITTED_CONNECTIONS = 64


def upstream_connections(settings: Settings) -> int:
    """The size of each upstream's connection pool: every admitted request
    gets a connection without waiting (the pool is never the hidden cap)."""
    return settings.upstream_max_connections or (
        settings.max_concurrent_requests + UNADMITTED_CONNECTIONS
    )


def upstream_options(settings: Settings) -> UpstreamOptions:
    return UpstreamOptions(
        kind=settings.upstream_kind,
        connect_timeout=settings.connect_timeout,
        first_byte_timeout=settings.first_byte_timeout,
        max_connections=upstream_connections(settings),
        api_key=settings.upstream_api_key,
        check_interval=settings.upstream_check_interval,
        check_timeout=settings.readiness_timeout,
        max_concurrent=settings.upstream_max_concurrent,
        affinity=settings.upstream_affinity,
        affinity_entries=settings.upstream_affinity_entries,
        affinity_seconds=settings.upstream_affinity_seconds,
    )


def renewal_options(settings: Settings) -> RenewalOptions:
    passphrase = settings.ca_passphrase
    return RenewalOptions(
        certs_dir=settings.certs_dir,
        names=tuple(settings.cert_names) if settings.cert_names else None,
        key_type=settings.cert_key_type,
        validity_days=settings.cert_validity_days,
        renew_before_days=settings.cert_renew_before_days,
        check_interval=settings.cert_check_interval,
        passphrase=passphrase.get_secret_value().encode() if passphrase is not None else None,
        passphrase_file=settings.ca_passphrase_file,
    )


def session_options(settings: Settings) -> SessionOptions:
    return SessionOptions(
        key_file=settings.session_key_file,
        lifetime=settings.session_lifetime,
        body_timeout=settings.body_timeout,
    )


def status_options(settings: Settings) -> StatusOptions:
    return StatusOptions(
        node_name=socket.gethostname(),
        node_id=node_id(settings),
        refresh=settings.status_refresh_seconds,
        pull_idle_timeout=settings.idle_timeout,
    )


def terminator(settings: Settings) -> TlsTerminator:
    return TlsTerminator(settings.server_cert_file, settings.server_key_file, settings.ca_cert_file)
