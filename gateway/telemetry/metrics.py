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

With worker processes, /metrics answered by any worker shows the whole
node: the supervisor gathers every worker's exposition, adds its own (the
admission counters it holds for all of them, the workers, the embedded
model) and sums the series (:func:`merge_expositions`). prometheus-client's
multiprocess mode was the other way; it would replace the per-app
registries and the collectors that read live state at scrape time with
files of its own, which these counters do not need.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from .stats import GatewayStats


def _build() -> dict[str, str]:
    try:
        version = importlib.metadata.version("fognode")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        version = "unknown"
    return {"version": version, "python": platform.python_version()}


BUILD = _build()

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
    def __init__(self, stats: GatewayStats, collectors: Iterable[Collector] = ()) -> None:
        """``collectors``: what else this process counts at scrape time (the
        node's Admission, where this process holds it)."""
        self.registry = CollectorRegistry(auto_describe=True)
        # Set in a worker process: the whole node's exposition, from its supervisor.
        self.node_exposition: Callable[[], Awaitable[bytes]] | None = None
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
            "it was chosen (loaded, cold, affinity, affinity-yielded, least-busy, soonest, only, "
            "down, waited, failover; a fog peer's peer-loaded, peer-free, peer-has-model).",
            ["upstream", "reason"],
            registry=self.registry,
        )
        self.upstream_busy = Counter(
            "fognode_upstream_busy_answers",
            "Answers 503 busy (Ollama's full queue, llama.cpp loading) by upstream position: "
            "counted as load, the request sent elsewhere when another upstream can take it.",
            ["upstream"],
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(stats))
        # The process's CPU, memory, descriptors and start (process_*), the
        # Python it runs on (python_info), and which fognode this is.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        Info("fognode_build", "The fognode release this node runs.", registry=self.registry).info(
            BUILD
        )
        for collector in collectors:
            self.registry.register(collector)
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
        """This process's own series."""
        return generate_latest(self.registry)

    async def exposition(self) -> bytes:
        """What /metrics answers: the node's series."""
        if self.node_exposition is not None:
            return await self.node_exposition()
        return self.render()

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

    def __init__(self, stats: GatewayStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield GaugeMetricFamily(
            "fognode_active_streams", "Responses being relayed right now.", value=s.active_streams
        )
        yield GaugeMetricFamily(
            "fognode_upstream_requests_in_flight",
            "Requests sent to Ollama and not finished.",
            value=s.active_requests,
        )
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


# --- the whole node from its workers' expositions -----------------------------------

# Gauges that do not add up over processes: how they combine instead.
# (Any worker's last contact with the upstream worked: the upstream is up. The
# node started when its first process did. Every process runs the same build
# and Python: the info series stays 1.) CPU, memory and descriptors add up to
# the node's.
_COMBINE: dict[str, Callable[[Iterable[float]], float]] = {
    "fognode_upstream_up": max,
    "process_start_time_seconds": min,
    "fognode_build_info": max,
    "python_info": max,
}


def merge_expositions(texts: Iterable[str]) -> bytes:
    """One exposition with every series summed over ``texts``.

    Counters and histograms (buckets, counts, sums) add up; so do the
    gauges that count things (connections, streams in flight). A
    ``_created`` timestamp is the earliest; the gauges in ``_COMBINE``
    combine as listed there. A family appears once, with the first help
    text and type seen.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = defaultdict(list)
            for sample in family.samples:
                key = (sample.name, tuple(sample.labels.items()))  # as written
                values[family.name][key].append(sample.value)
    for name, family in families.items():
        combine = _COMBINE.get(name, sum)
        for (sample_name, labels), seen in values[name].items():
            value = min(seen) if sample_name.endswith("_created") else combine(seen)
            family.samples.append(Sample(sample_name, dict(labels), value))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)
