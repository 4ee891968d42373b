"""Liveness and readiness probes.

``/healthz`` answers from the process alone: it says the event loop runs.
``/readyz`` says whether a request would get anywhere: it asks Ollama for its
version and model count, and reuses the answer for a second so an
orchestrator or a crowd of phones probing it costs Ollama almost nothing.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from . import __version__
from .proxy import UPSTREAM
from .stats import STATS
from .upstream import Readiness, not_ready_error, probe_upstream

_READINESS = web.AppKey("fognode.readiness", dict)


async def healthz(request: web.Request) -> web.Response:
    stats = request.app[STATS]
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "active_requests": stats.active_requests,
            "active_streams": stats.active_streams,
        }
    )


async def readyz(request: web.Request) -> web.Response:
    upstream = request.app[UPSTREAM]
    settings = upstream.settings
    waiting = upstream.not_ready()
    if waiting is not None:  # the embedded model is loading: no need to ask it
        reason, retry_after = waiting
        error = not_ready_error(reason, retry_after)
        body = {"status": "starting", "upstream_kind": upstream.kind, **error.body()}
        return web.json_response({**body, **upstream.about()}, status=503, headers=error.headers)
    cache = request.app[_READINESS]
    cached: Readiness | None = cache.get("last")
    if cached is None or time.monotonic() - cached.checked_at > settings.readiness_cache_seconds:
        # One probe at a time: concurrent callers wait for the same answer.
        lock: asyncio.Lock = cache["lock"]
        async with lock:
            cached = cache.get("last")
            if (
                cached is None
                or time.monotonic() - cached.checked_at > settings.readiness_cache_seconds
            ):
                cached = await probe_upstream(upstream, settings.readiness_timeout)
                cache["last"] = cached
                request.app[STATS].upstream_up = cached.ready
    assert cached is not None
    return web.json_response(
        {**cached.body, **upstream.about()}, status=200 if cached.ready else 503
    )


def setup_health(app: web.Application) -> None:
    app[_READINESS] = {"lock": asyncio.Lock()}
