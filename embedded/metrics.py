"""The embedded engine in /metrics: up, asleep, restarts, memory, load time,
and what the engine itself counts (slots, tokens).

Read at scrape time from the supervisor (a /proc read for the memory, the
engine's numbers from its last look), so nothing is mirrored on the hot
path and a scrape never waits on the engine.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .runtime import EmbeddedRuntime
from .supervisor import SERVING, State


class EmbeddedCollector(Collector):
    def __init__(self, runtime: EmbeddedRuntime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        server = self.runtime.server
        load = server.load
        serving = server.state in SERVING

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"fognode_embedded_{name}", text, value=value)

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"fognode_embedded_{name}", text, value=value)

        yield gauge(
            "up", "1 while the embedded llama.cpp server serves (awake or asleep).", serving
        )
        yield gauge(
            "asleep",
            "1 while the embedded model is unloaded after FOGNODE_EMBEDDED_IDLE_SECONDS idle.",
            server.state is State.ASLEEP,
        )
        yield counter(
            "restarts",
            "Restarts of the embedded llama.cpp server after it stopped unexpectedly.",
            server.restarts,
        )
        rss = server.rss_bytes()
        if rss is not None:
            yield gauge(
                "memory_bytes", "Resident memory (RSS) of the embedded llama.cpp server.", rss
            )
        if server.load_seconds is not None:
            yield gauge(
                "load_seconds",
                "How long the last start of the embedded llama.cpp server took until it served.",
                server.load_seconds,
            )
        yield gauge("slots", "Parallel slots of the embedded engine.", server.options.slots)
        if not serving:
            return
        yield gauge("slots_busy", "Slots generating or reading a prompt now.", load.slots_busy)
        yield gauge(
            "requests_deferred", "Requests waiting inside the engine for a slot.", load.deferred
        )
        yield counter(
            "prompt_tokens",
            "Prompt tokens the engine evaluated (since it started; cached ones not counted).",
            load.prompt_tokens,
        )
        yield counter(
            "prompt_tokens_cached",
            "Prompt tokens the engine took from its slot or prompt cache instead.",
            load.cached_tokens,
        )
        yield counter(
            "generated_tokens",
            "Tokens the engine generated (since it started).",
            load.generated_tokens,
        )
