"""/metrics: the node's Prometheus exposition (telemetry/metrics.py keeps the series)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ...auth.principal import Access
from ..pipeline.routes import RouteSpec, add_route
from ..telemetry.metrics import METRICS, Metrics


def setup_metrics(app: web.Application, metrics: Metrics, *, public: bool) -> None:
    """Serve /metrics: load and usage of the whole node, so administrators only
    (or a scraper with an admin API key) unless the operator makes them public."""
    app[METRICS] = metrics

    async def metrics_handler(request: web.Request) -> web.Response:
        return web.Response(
            body=await metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    access = Access.PUBLIC if public else Access.ADMIN
    add_route(app, RouteSpec("GET", "/metrics", access), metrics_handler)
