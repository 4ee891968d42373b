"""Liveness and readiness probes.

``/healthz`` answers from the process alone: it says the event loop runs.
``/readyz`` says whether a request would get anywhere: it has the upstream
pool probe every upstream (their model lists, and Ollama's version), and
reuses the answer for a second so an orchestrator or a crowd of phones
probing it costs the upstreams almost nothing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ...auth.principal import Access
from .. import __version__
from ..core.drain import Drain
from ..pipeline.routes import RouteSpec, add_route
from ..telemetry.stats import GatewayStats
from ..upstreams.pool import UpstreamPool
from ..upstreams.upstream import START_OLLAMA_HINT, not_ready_error


@dataclass(frozen=True)
class ReadinessOptions:
    cache_seconds: float  # how long one answer is reused


def setup_health(
    app: web.Application,
    pool: UpstreamPool,
    stats: GatewayStats,
    options: ReadinessOptions,
    drain: Drain | None = None,
) -> None:
    """``drain``: while the node drains, /readyz says so (503: a load balancer
    sends it nothing new; the running streams finish)."""
    lock = asyncio.Lock()  # one check at a time: concurrent probes share its answer
    last: tuple[float, int, dict[str, Any]] | None = None

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "status": "ok",
                "version": __version__,
                "active_requests": stats.active_requests,
                "active_streams": stats.active_streams,
            }
        )

    async def readyz(request: web.Request) -> web.Response:
        nonlocal last
        if drain is not None and drain.draining:
            return web.json_response(
                {
                    "status": "draining",
                    "since": drain.since,
                    "active_requests": stats.active_requests,
                    "active_streams": stats.active_streams,
                },
                status=503,
            )
        waiting = pool.not_ready()
        if waiting is not None:  # the embedded model is loading: no need to ask it
            error = not_ready_error(*waiting)
            body = {"status": "starting", "upstream_kind": pool.kind, **error.body()}
            return web.json_response({**body, **pool.about()}, status=503, headers=error.headers)
        if last is None or time.monotonic() - last[0] > options.cache_seconds:
            async with lock:
                if last is None or time.monotonic() - last[0] > options.cache_seconds:
                    status, body = await _readiness(pool)
                    stats.upstream_up = status == 200
                    last = (time.monotonic(), status, body)
        _, status, body = last
        return web.json_response({**body, **pool.about()}, status=status)

    add_route(app, RouteSpec("GET", "/healthz", Access.PUBLIC), healthz)
    add_route(app, RouteSpec("GET", "/readyz", Access.PUBLIC), readyz)


async def _readiness(pool: UpstreamPool) -> tuple[int, dict[str, Any]]:
    state = await pool.readiness()
    if state.ready:
        return 200, {
            "status": "ready",
            "upstream": pool.base,
            "upstream_kind": pool.kind,
            "ollama_version": state.version,
            "models": len(state.models),
        }
    return 503, {
        "status": "unavailable",
        "upstream": pool.base,
        "error": {
            "message": f"The upstream at {pool.base} is not reachable: {state.error}. "
            f"{START_OLLAMA_HINT}",
            "type": "service_unavailable_error",
            "param": None,
            "code": "upstream_unavailable",
        },
    }
