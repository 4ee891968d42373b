"""Request ids, hop-by-hop headers, connection reuse, access logs and probes."""

from __future__ import annotations

import logging
import re

import aiohttp
import pytest
from aiohttp import web

from fognode.gateway.node.server import RunningServer
from tests.support.gateway import GatewayFactory
from tests.support.helpers import CHAT, free_port
from tests.support.ollama_standin import VERSIONS, OllamaStandIn


async def test_request_id_is_echoed_forwarded_and_generated(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{gateway.url}/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "abc-123"}
    ) as resp:
        assert resp.headers["X-Request-ID"] == "abc-123"
    assert standin.last("/v1/chat/completions").headers["X-Request-ID"] == "abc-123"

    async with http.get(f"{gateway.url}/healthz") as resp:
        generated = resp.headers["X-Request-ID"]
        assert resp.headers["Server"] == "fognode"  # no software versions advertised
    assert re.fullmatch(r"[0-9a-f]{32}", generated)

    # An id that could inject into logs or headers is replaced, not echoed.
    async with http.get(f"{gateway.url}/healthz", headers={"X-Request-ID": "a b\tc"}) as resp:
        assert resp.headers["X-Request-ID"] != "a b\tc"

    # Streams echo it too (it must be set before the headers go out).
    async with http.post(
        f"{gateway.url}/v1/chat/completions",
        json=dict(CHAT, stream=True),
        headers={"X-Request-ID": "stream-1"},
    ) as resp:
        assert resp.headers["X-Request-ID"] == "stream-1"
        await resp.read()
    # And errors made by the gateway itself.
    async with http.post(
        f"{gateway.url}/v1/chat/completions", json={}, headers={"X-Request-ID": "bad-1"}
    ) as resp:
        assert resp.status == 400 and resp.headers["X-Request-ID"] == "bad-1"


async def test_hop_by_hop_and_credentials_are_not_forwarded(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{gateway.url}/v1/chat/completions",
        json=CHAT,
        headers={
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Authorization": "Bearer client-token",
            "Cookie": "session=1",
            "TE": "trailers",
            "X-Custom": "kept",
        },
    ) as resp:
        assert resp.status == 200
    seen = {k.lower(): v for k, v in standin.last("/v1/chat/completions").headers.items()}
    for name in ("x-private-hop", "keep-alive", "proxy-authorization", "te", "cookie"):
        assert name not in seen, name
    assert seen.get("authorization") is None
    assert seen["x-custom"] == "kept"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"


async def test_hop_by_hop_response_headers_are_dropped(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": True},
            headers={"Connection": "X-Upstream-Hop", "X-Upstream-Hop": "1", "X-Kept": "yes"},
        )

    app = web.Application()
    app.router.add_get("/api/tags", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        gateway = await make_gateway(f"http://127.0.0.1:{runner.addresses[0][1]}")
        async with http.get(f"{gateway.url}/api/tags") as resp:
            assert resp.headers["X-Kept"] == "yes"
            assert "X-Upstream-Hop" not in resp.headers
            assert await resp.json() == {"ok": True}
    finally:
        await runner.cleanup()


async def test_upstream_connections_are_reused(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    for _ in range(20):
        async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
    peers = {r.peer for r in standin.forwarded}
    assert len(standin.forwarded) == 20
    assert len(peers) == 1, f"{len(peers)} upstream connections for 20 sequential requests"


async def test_access_log_line_per_request(
    gateway: RunningServer, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fognode.access")
    async with http.post(
        f"{gateway.url}/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "log-1"}
    ) as resp:
        size = len(await resp.read())
    async with http.post(f"{gateway.url}/v1/chat/completions", json={}) as resp:
        await resp.read()
    records = [r for r in caplog.records if r.name == "fognode.access"]
    assert len(records) == 2
    ok = records[0].fields  # type: ignore[attr-defined]
    assert ok["status"] == 200 and ok["path"] == "/v1/chat/completions"
    assert ok["bytes"] == size
    assert ok["duration_s"] >= 0
    assert ok["request_id"] == "log-1"
    assert "200" in records[0].getMessage() and f"{size}B" in records[0].getMessage()
    assert records[1].fields["status"] == 400  # type: ignore[attr-defined]


async def test_access_log_counts_the_bytes_of_error_bodies(
    gateway: RunningServer,
    standin: OllamaStandIn,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Errors the gateway makes, and an upstream's error relayed, were logged as 0B."""
    caplog.set_level(logging.INFO, logger="fognode.access")
    sizes = []
    async with http.post(f"{gateway.url}/v1/chat/completions", json={}) as resp:
        sizes.append(len(await resp.read()))  # the gateway's own 400
    standin.force_error = (400, {"error": {"code": 400, "message": "bad", "type": "x"}})
    async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 400
        sizes.append(len(await resp.read()))  # the upstream's, in OpenAI's shape
    records = [r for r in caplog.records if r.name == "fognode.access"]
    assert [r.fields["bytes"] for r in records] == sizes  # type: ignore[attr-defined]
    assert all(
        size > 0 and f" {size}B " in r.getMessage() for r, size in zip(records, sizes, strict=True)
    )


async def test_healthz_is_up_even_without_ollama(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(f"http://127.0.0.1:{free_port()}")
    async with http.get(f"{gateway.url}/healthz") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ok" and body["active_streams"] == 0


async def test_readyz_reports_ollama_version_and_models(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.url}/readyz") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body == {
        "status": "ready",
        "upstream": standin.url,
        "upstream_kind": "ollama",
        "ollama_version": VERSIONS["current"],
        "models": len(standin.models),
        "upstream_choice": f"Ollama at {standin.url}, as configured",
    }


async def test_readyz_is_503_when_ollama_is_down_and_cached_briefly(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(standin.url, readiness_cache_seconds=60)
    started = len(standin.checks)  # the pool's own check at start
    for _ in range(5):
        async with http.get(f"{gateway.url}/readyz") as resp:
            assert resp.status == 200
    # Five probes, one upstream check (version, models, loaded models).
    checked = sorted(r.path for r in standin.checks[started:])
    assert checked == ["/api/ps", "/api/tags", "/api/version"]

    down = await make_gateway(f"http://127.0.0.1:{free_port()}")
    async with http.get(f"{down.url}/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["status"] == "unavailable"
    assert body["error"]["code"] == "upstream_unavailable"
    assert "ollama serve" in body["error"]["message"]
