"""Assemble the aiohttp application from the parts.

This is the only module that knows every step of the data flow
(client -> TLS -> auth -> limits -> proxy -> Ollama); each part stays
ignorant of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from .access import AUTHORIZER, Access, Authorizer
from .auth_setup import build_authorizer
from .health import setup_health
from .keepalive import HeartbeatOptions
from .limits import Admission
from .metrics import METRICS, Metrics
from .middleware import (
    access_control,
    add_request_id_header,
    openai_errors,
    request_context,
)
from .openapi import OPENAPI, build_document
from .proxy import ADMISSION, HEARTBEAT_OPTIONS, RELAY_OPTIONS, UPSTREAM
from .relay import RelayOptions
from .request_target import request_target
from .routes import ALL_ROUTES, add_routes
from .settings import Settings
from .slow_clients import HEADER_FIELD_LIMIT, REQUEST_LINE_LIMIT
from .stats import STATS, GatewayStats
from .tls import TlsTerminator
from .upstream_pool import UpstreamPool

SETTINGS = web.AppKey("fognode.settings", Settings)


TLS = web.AppKey("fognode.tls", TlsTerminator)


def create_app(
    settings: Settings,
    *,
    authorizer: Authorizer | None = None,
    tls: TlsTerminator | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[request_context, openai_errors, request_target, access_control],
        client_max_size=settings.max_body_bytes,
        handler_args={"max_field_size": HEADER_FIELD_LIMIT, "max_line_size": REQUEST_LINE_LIMIT},
    )
    app[SETTINGS] = settings
    app[STATS] = GatewayStats()
    app[AUTHORIZER] = authorizer or build_authorizer(settings)
    app[UPSTREAM] = UpstreamPool(settings)
    app[ADMISSION] = Admission(
        max_concurrent=settings.max_concurrent_requests,
        max_queue=settings.max_queued_requests,
        per_user_concurrent=settings.per_user_concurrent_requests,
        per_user_queue=settings.per_user_queued_requests,
        queue_timeout=settings.queue_timeout,
    )
    app[RELAY_OPTIONS] = RelayOptions(
        idle_timeout=settings.idle_timeout,
        write_timeout=settings.client_write_timeout,
        heartbeat_interval=settings.stream_heartbeat_interval,
    )
    app[HEARTBEAT_OPTIONS] = HeartbeatOptions(
        after=settings.stream_heartbeat_after, interval=settings.stream_heartbeat_interval
    )
    app[METRICS] = Metrics(app[STATS], app[ADMISSION])
    app[OPENAPI] = build_document(ALL_ROUTES)
    setup_health(app)
    add_routes(
        app,
        metrics_access=Access.PUBLIC if settings.metrics_public else Access.ADMIN,
        upstream_kind=settings.upstream_kind,
    )
    app.on_response_prepare.append(add_request_id_header)
    app.cleanup_ctx.append(_upstream_session)
    app.on_cleanup.append(_close_authorizer)
    if tls is not None:
        app[TLS] = tls
        app.cleanup_ctx.append(_certificate_watch)
    return app


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    upstream = app[UPSTREAM]
    await upstream.start()
    yield
    await upstream.close()


async def _certificate_watch(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[TLS].watch(), name="fognode-cert-watch")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_authorizer(app: web.Application) -> None:
    authorizer: Authorizer = app[AUTHORIZER]  # type: ignore[assignment]
    authorizer.close()
