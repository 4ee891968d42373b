"""An OpenAI-compatible upstream (llama.cpp's server, vLLM, LocalAI) instead of Ollama."""

from __future__ import annotations

import aiohttp
import pytest

from fognode.gateway.config.settings import Settings
from fognode.gateway.node.announce import AnnounceOptions, NodeAnnouncer, announcement
from fognode.gateway.pipeline.admission import ADMISSION
from fognode.gateway.upstreams.pool import UPSTREAM
from tests.support.gateway import GatewayFactory
from tests.support.helpers import CHAT
from tests.support.ollama_standin import OllamaStandIn


async def test_openai_kind_serves_v1_and_refuses_native_routes_with_501(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    gateway = await make_gateway(standin.url, upstream_kind="openai")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
            assert (await resp.json())["choices"][0]["message"]["content"] == standin.reply
        for method, path in (("GET", "/api/tags"), ("POST", "/api/chat"), ("POST", "/api/pull")):
            async with http.request(method, gateway.url + path, json={}) as resp:
                assert resp.status == 501
                error = (await resp.json())["error"]
                assert error["code"] == "native_api_unavailable" and "/v1" in error["message"]
        async with http.get(f"{gateway.url}/readyz") as resp:
            body = await resp.json()
    assert resp.status == 200
    assert body["upstream_kind"] == "openai" and body["ollama_version"] is None
    assert body["models"] == len(standin.models)
    # Only /v1 and probes reached the upstream: /props once, where llama.cpp's
    # server would tell its slots (this one has no such route, so never again).
    assert {r.path for r in standin.requests} == {"/v1/chat/completions", "/v1/models", "/props"}
    assert [r.path for r in standin.requests].count("/props") == 1


@pytest.mark.parametrize("kind", ["ollama", "openai"])
async def test_model_list_for_mdns_comes_from_the_right_endpoint(
    standin: OllamaStandIn, make_gateway: GatewayFactory, kind: str
) -> None:
    gateway = await make_gateway(standin.url, upstream_kind=kind)
    app = gateway.app
    base = announcement(
        Settings(upstream_kind=kind), port=gateway.port, ca_sha256="", auth="none", capacity=4
    )
    announcer = NodeAnnouncer(
        base, AnnounceOptions(10, 5), admission=app[ADMISSION], pool=app[UPSTREAM]
    )
    txt = announcer.current_txt()
    assert txt.models == tuple(sorted(standin.models))
    assert txt.api == ("openai,ollama" if kind == "ollama" else "openai")
    # What the pool's one check found: it asked the endpoints of its kind, nothing else
    # (Ollama also for its loaded models; an OpenAI-compatible server's are those it
    # serves, and it may be llama.cpp's server, which tells its slots at /props).
    expected = {"/api/tags", "/api/ps"} if kind == "ollama" else {"/v1/models", "/props"}
    assert {r.path for r in standin.requests} == expected


async def test_openai_kind_answers_model_not_found_in_ollamas_words(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    """llama.cpp's server answers any model name; clients expect a 404 for a missing one."""
    gateway = await make_gateway(standin.url, upstream_kind="openai")
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gateway.url}/v1/chat/completions", json=dict(CHAT, model="phi4:14b")) as resp,
    ):
        assert resp.status == 404
        error = (await resp.json())["error"]
    assert error["message"] == "model 'phi4:14b' not found, try pulling it first"
    assert error["type"] == "not_found_error"
    assert "/v1/chat/completions" not in {r.path for r in standin.requests}


async def test_openai_kind_answers_one_model_from_its_list(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    """llama.cpp's server answers /v1/models/<its own alias> with 404: the node
    answers one model from the list, and a missing one in the app's words."""
    gateway = await make_gateway(standin.url, upstream_kind="openai")
    name = sorted(standin.models)[0]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/v1/models/{name}") as resp:
            assert resp.status == 200
            entry = await resp.json()
        async with http.get(f"{gateway.url}/v1/models/phi4:14b") as resp:
            assert resp.status == 404
            error = (await resp.json())["error"]
        async with http.get(f"{gateway.url}/v1/models") as resp:
            listed = {m["id"]: m for m in (await resp.json())["data"]}
    assert entry == listed[name] and entry["object"] == "model" and "fognode" in entry
    assert error["message"] == "model 'phi4:14b' not found, try pulling it first"
    assert (error["type"], error["code"]) == ("not_found_error", "model_not_found")
    assert not any(r.path.startswith("/v1/models/") for r in standin.requests)
