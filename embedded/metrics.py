"""The embedded runtime in /metrics: up, restarts, memory, load time, per slot.

Read at scrape time from the supervisors (a /proc read for the memory), so
nothing is mirrored on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .runtime import EmbeddedRuntime
from .supervisor import State


class EmbeddedCollector(Collector):
    def __init__(self, runtime: EmbeddedRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "fognode_embedded_up",
            "1 while the embedded llama.cpp server answers, per slot.",
            labels=["slot"],
        )
        restarts = CounterMetricFamily(
            "fognode_embedded_restarts",
            "Restarts of the embedded llama.cpp server after it stopped unexpectedly.",
            labels=["slot"],
        )
        memory = GaugeMetricFamily(
            "fognode_embedded_memory_bytes",
            "Resident memory (RSS) of the embedded llama.cpp server process.",
            labels=["slot"],
        )
        load = GaugeMetricFamily(
            "fognode_embedded_load_seconds",
            "How long the last start of the embedded llama.cpp server took until it answered.",
            labels=["slot"],
        )
        for server in self.runtime.servers:
            slot = [str(server.slot)]
            up.add_metric(slot, 1 if server.state is State.READY else 0)
            restarts.add_metric(slot, server.restarts)
            rss = server.rss_bytes()
            if rss is not None:
                memory.add_metric(slot, rss)
            if server.load_seconds is not None:
                load.add_metric(slot, server.load_seconds)
        yield from (up, restarts, memory, load)
