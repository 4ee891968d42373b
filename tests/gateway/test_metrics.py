"""/metrics: what happened is counted, and only administrators may read it."""

from __future__ import annotations

import importlib.metadata

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from fognode.auth.api_keys import entry_for, new_key
from fognode.gateway.node.server import RunningServer
from fognode.gateway.telemetry.metrics import Metrics, merge_expositions
from fognode.gateway.telemetry.stats import GatewayStats
from tests.support.gateway import GatewayFactory
from tests.support.helpers import STREAMED_CHAT as CHAT
from tests.support.helpers import free_port
from tests.support.ollama_standin import OllamaStandIn


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def scrape(http: aiohttp.ClientSession, gateway: RunningServer, key: str | None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.get(f"{gateway.url}/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


async def test_requests_streams_auth_failures_and_admission_are_counted(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    admin, user = new_key(), new_key()
    gateway = await make_gateway(
        standin.url,
        auth="firebase",
        api_keys=[entry_for(admin, "ops", admin=True), entry_for(user, "app", admin=False)],
        max_concurrent_requests=3,
    )
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{gateway.url}/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {user}"},
        ) as resp:
            streamed = len(await resp.read())
        async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 401
        async with http.get(
            f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {user}"}
        ) as resp:
            assert resp.status == 403  # users may not read node-wide metrics
        text = await scrape(http, gateway, admin)

    got = samples(text)
    route = "/v1/chat/completions"
    assert (
        got[("fognode_requests_total", (("method", "POST"), ("route", route), ("status", "200")))]
        == 1
    )
    assert (
        got[("fognode_requests_total", (("method", "POST"), ("route", route), ("status", "401")))]
        == 1
    )
    assert got[("fognode_request_duration_seconds_count", (("route", route),))] == 2
    assert got[("fognode_upstream_first_byte_seconds_count", (("route", route),))] == 1
    assert got[("fognode_relayed_bytes_total", (("route", route),))] == streamed
    assert got[("fognode_relayed_chunks_total", (("route", route),))] >= 1
    assert got[("fognode_auth_failures_total", (("reason", "missing_token"),))] == 1
    assert got[("fognode_auth_failures_total", (("reason", "admin_required"),))] == 1
    assert got[("fognode_admission_capacity", ())] == 3
    assert got[("fognode_active_streams", ())] == 0
    assert got[("fognode_upstream_up", ())] == 1
    assert got[("fognode_admission_rejections_total", (("reason", "node_busy"),))] == 0
    # No user or token ever appears in the metrics.
    assert user not in text and "apikey:app" not in text


async def test_public_metrics_and_upstream_down(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(
        f"http://127.0.0.1:{free_port()}",
        auth="firebase",
        api_keys=[entry_for(new_key(), "x", admin=False)],
        metrics_public=True,
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/readyz") as resp:
            assert resp.status == 503
        got = samples(await scrape(http, gateway, None))
    assert got[("fognode_upstream_up", ())] == 0


async def test_process_and_build_series(make_gateway: GatewayFactory) -> None:
    """What every Prometheus target is expected to have: process_* and which build runs."""
    gateway = await make_gateway(f"http://127.0.0.1:{free_port()}", metrics_public=True)
    async with aiohttp.ClientSession() as http:
        got = samples(await scrape(http, gateway, None))
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
    ):
        assert got[(name, ())] > 0, name
    build = [labels for (name, labels) in got if name == "fognode_build_info"]
    assert len(build) == 1 and dict(build[0])["version"] == importlib.metadata.version("fognode")
    assert got[("fognode_build_info", build[0])] == 1


def test_the_node_of_several_processes_sums_their_use_and_keeps_one_start_and_build() -> None:
    stats = GatewayStats()
    first, second = Metrics(stats).render().decode(), Metrics(stats).render().decode()
    merged = merge_expositions([first, second]).decode()

    def value(text: str, prefix: str) -> float:
        return float(
            next(line for line in text.splitlines() if line.startswith(prefix)).split()[-1]
        )

    starts = [value(t, "process_start_time_seconds") for t in (first, second)]
    assert value(merged, "process_start_time_seconds") == min(starts)
    fds = [value(t, "process_open_fds") for t in (first, second)]
    assert value(merged, "process_open_fds") == sum(fds)
    assert value(merged, "fognode_build_info") == 1 and value(merged, "python_info") == 1
