"""The gateway, assembled: the request pipeline in the order a request meets it.

    client ─TLS─▶ context ▶ errors ▶ target ▶ access ▶ body ▶ admission ▶ proxy ─▶ upstream
    client ◀──────────────── relay: each chunk as it arrives ◀──────────────── upstream

TLS, connection limits and malformed HTTP are handled below the app, on the
connection (server.py). Each stage is a module that installs itself with its
``setup_...`` function (a middleware or routes, and whatever it owns) and
gets what it needs here, as small option objects made from the settings;
this is the only module that knows every stage. The probes, /metrics and
/openapi.json register their routes through the same route table, so the
access stage guards them too.
"""

from __future__ import annotations

from aiohttp import web

from .access import Authorizer, setup_access
from .admission import Admission, setup_admission
from .auth_setup import build_authorizer
from .cert_renewal import CertificateKeeper, RenewalOptions, setup_certificate_renewal
from .context import setup_request_context
from .errors import setup_openai_errors
from .health import ReadinessOptions, setup_health
from .keepalive import HeartbeatOptions
from .metrics import Metrics, setup_metrics
from .openapi import setup_openapi
from .proxy import setup_proxy
from .relay import RelayOptions
from .request_target import setup_request_target
from .settings import Settings
from .slow_clients import HEADER_FIELD_LIMIT, REQUEST_LINE_LIMIT
from .stats import STATS, GatewayStats
from .tls import TlsTerminator
from .upstream import UpstreamOptions
from .upstream_pool import UpstreamPool
from .validation import BodyLimits, setup_validation


def create_app(
    settings: Settings,
    *,
    authorizer: Authorizer | None = None,
    tls: TlsTerminator | None = None,
) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        handler_args={"max_field_size": HEADER_FIELD_LIMIT, "max_line_size": REQUEST_LINE_LIMIT},
    )
    stats = app[STATS] = GatewayStats()
    admission = admission_from(settings)
    metrics = Metrics(stats, admission)
    pool = UpstreamPool(
        settings.upstream_urls or [settings.upstream_base], upstream_options(settings)
    )

    # 1. A request id for every request; one access-log line and its metrics at the end.
    setup_request_context(app, metrics)
    # 2. Whatever a later stage refuses leaves in OpenAI's error shape.
    setup_openai_errors(app)
    # 3. One way to read the request (path, headers) before access is decided on it.
    setup_request_target(app)
    # 4. Who is calling, and may they use this route (auth/ decides).
    setup_access(app, metrics, authorizer=authorizer, build=lambda: build_authorizer(settings))
    # 5. The body, read within limits and checked; before admission on purpose,
    #    so a bad request never takes a place in the queue.
    setup_validation(
        app, BodyLimits(max_bytes=settings.max_body_bytes, timeout=settings.body_timeout)
    )
    # 6. Inference waits for a slot (per user, then the node); a streamed request
    #    that waits long gets its headers and heartbeats early.
    setup_admission(
        app,
        admission,
        HeartbeatOptions(
            after=settings.stream_heartbeat_after, interval=settings.stream_heartbeat_interval
        ),
    )
    # 7. Forward to an upstream; relay the answer back as it arrives.
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


def terminator(settings: Settings) -> TlsTerminator:
    return TlsTerminator(settings.server_cert_file, settings.server_key_file, settings.ca_cert_file)
