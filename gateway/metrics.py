"""Prometheus metrics at /metrics (prometheus-client).

Each app has its own registry, so several gateways in one process (tests)
do not share counters. Hot-path costs are kept small: per-request counters
and histograms are updated once per request, relayed chunks are summed in
the relay and added once when the response ends, and everything that is
already counted elsewhere (live streams, queue depth, admission refusals,
the token cache) is read at scrape time by a collector instead of being
mirrored on every change.

Labels are bounded: the route label is the route's pattern
(`/v1/models/{model}`), never the raw path, and no label carries a user.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from ..auth.principal import Access
from .routes import RouteSpec, add_route

if TYPE_CHECKING:
    from .admission import Admission
from .stats import GatewayStats

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)


class Metrics:
    def __init__(self, stats: GatewayStats, admission: Admission) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fognode_requests",
            "Requests answered, by route pattern, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "fognode_request_duration_seconds",
            "Time from request to the end of the response (whole stream).",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_byte = Histogram(
            "fognode_upstream_first_byte_seconds",
            "Time until Ollama's response headers; for streams, the time to the first token.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.chunks = Counter(
            "fognode_relayed_chunks",
            "Chunks (SSE events, NDJSON lines, body pieces) relayed to clients.",
            ["route"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "fognode_relayed_bytes",
            "Response body bytes relayed to clients.",
            ["route"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "fognode_auth_failures",
            "Refused credentials and policy denials, by reason code.",
            ["reason"],
            registry=self.registry,
        )
        self.upstream_choices = Counter(
            "fognode_upstream_choices",
            "Requests sent to one of several upstreams, by its position and the reasons "
            "it was chosen (loaded, cold, affinity, affinity-yielded, least-busy, only, failover).",
            ["upstream", "reason"],
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(stats, admission))
        # The labelled children per label values: prometheus-client's labels()
        # validates, locks and builds a tuple on every call.
        self._per_request: dict[tuple[str, str, int], _RequestChildren] = {}
        self._first_byte: dict[str, Histogram] = {}

    def request_done(
        self,
        route: str,
        method: str,
        status: int,
        duration: float,
        chunks: int | None,
        sent: int,
    ) -> None:
        """Count one finished request (``chunks`` None: nothing was relayed)."""
        children = self._per_request.get((route, method, status))
        if children is None:
            children = self._per_request[(route, method, status)] = _RequestChildren(
                self.requests.labels(route, method, str(status)),
                self.duration.labels(route),
                self.chunks.labels(route),
                self.bytes.labels(route),
            )
        children.requests.inc()
        children.duration.observe(duration)
        if chunks is not None:
            children.chunks.inc(chunks)
            children.bytes.inc(sent)

    def first_byte_after(self, route: str, seconds: float) -> None:
        child = self._first_byte.get(route)
        if child is None:
            child = self._first_byte[route] = self.first_byte.labels(route)
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def watch_connections(self, connections: ConnectionCounts) -> None:
        """Also report the connection guard's counts (it exists once the server runs)."""
        self.registry.register(_ConnectionCollector(connections))


@dataclass(frozen=True)
class _RequestChildren:
    requests: Counter
    duration: Histogram
    chunks: Counter
    bytes: Counter


class ConnectionCounts(Protocol):
    """What the connection guard (connections.py) counts."""

    refused_total: int
    evicted_total: int
    reaped_total: int

    def __len__(self) -> int: ...


class _ConnectionCollector(Collector):
    def __init__(self, connections: ConnectionCounts) -> None:
        self.connections = connections

    def collect(self) -> Iterator[Metric]:
        c = self.connections
        yield GaugeMetricFamily(
            "fognode_client_connections", "Client connections open.", value=len(c)
        )
        closed = CounterMetricFamily(
            "fognode_client_connections_closed",
            "Client connections the node closed or refused to protect itself, by reason: "
            "refused (every connection busy), idle (closed to make room at a cap), silent "
            "(no request within FOGNODE_CLIENT_FIRST_BYTE_TIMEOUT).",
            labels=["reason"],
        )
        closed.add_metric(["refused"], c.refused_total)
        closed.add_metric(["idle"], c.evicted_total)
        closed.add_metric(["silent"], c.reaped_total)
        yield closed


class _LiveCollector(Collector):
    """Reads the counters the gateway keeps anyway, at scrape time."""

    def __init__(self, stats: GatewayStats, admission: Admission) -> None:
        self.stats = stats
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        s, a = self.stats, self.admission
        yield GaugeMetricFamily(
            "fognode_active_streams", "Responses being relayed right now.", value=s.active_streams
        )
        yield GaugeMetricFamily(
            "fognode_upstream_requests_in_flight",
            "Requests sent to Ollama and not finished.",
            value=s.active_requests,
        )
        yield GaugeMetricFamily(
            "fognode_admission_active", "Inference slots in use.", value=a.active
        )
        yield GaugeMetricFamily(
            "fognode_admission_capacity", "Inference slots in all.", value=a.capacity
        )
        yield GaugeMetricFamily(
            "fognode_queue_depth", "Inference requests waiting for a slot.", value=a.queued
        )
        rejected = CounterMetricFamily(
            "fognode_admission_rejections",
            "Requests refused by admission control, by reason.",
            labels=["reason"],
        )
        rejected.add_metric(["user_concurrency_limit"], a.rejected_user)
        rejected.add_metric(["node_busy"], a.rejected_full)
        rejected.add_metric(["queue_timeout"], a.timed_out)
        yield rejected
        yield CounterMetricFamily(
            "fognode_client_disconnects",
            "Responses cut short because the client left (upstream cancelled).",
            value=s.client_disconnects_total,
        )
        yield CounterMetricFamily(
            "fognode_upstream_failures",
            "Upstream responses that broke off or stalled mid-body.",
            value=s.upstream_failures_total,
        )
        if s.upstream_up is not None:
            yield GaugeMetricFamily(
                "fognode_upstream_up",
                "1 if the last contact with Ollama succeeded, else 0.",
                value=1 if s.upstream_up else 0,
            )


METRICS = web.AppKey("fognode.metrics", Metrics)


def setup_metrics(app: web.Application, metrics: Metrics, *, public: bool) -> None:
    """Serve /metrics: load and usage of the whole node, so administrators only
    (or a scraper with an admin API key) unless the operator makes them public."""
    app[METRICS] = metrics

    async def metrics_handler(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    access = Access.PUBLIC if public else Access.ADMIN
    add_route(app, RouteSpec("GET", "/metrics", access), metrics_handler)
