"""Model-aware routing through the gateway, with Ollama stand-ins as upstreams:
hot models in /v1/models and /api/ps, warm upstreams preferred, a
conversation's turns kept on the upstream that holds its prompt, and every
choice explained (header, access log, /metrics)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fognode.auth.api_keys import entry_for, new_key
from fognode.gateway.config.settings import Settings
from fognode.gateway.node.announce import AnnounceOptions, NodeAnnouncer, announcement
from fognode.gateway.pipeline.admission import ADMISSION
from fognode.gateway.upstreams.pool import UPSTREAM
from tests.support.gateway import GatewayFactory
from tests.support.helpers import wait_until
from tests.support.ollama_standin import OllamaStandIn

MODEL = "llama3.2:1b"


@pytest.fixture
async def pair() -> AsyncIterator[tuple[OllamaStandIn, OllamaStandIn]]:
    first, second = OllamaStandIn(), OllamaStandIn()
    for standin in (first, second):
        standin.load(MODEL)
        await standin.start()
    yield first, second
    for standin in (first, second):
        await standin.stop()


def turn(n: int, *, topic: str = "the sea", model: str = MODEL) -> dict[str, Any]:
    """A chat at its turn ``n``: the earlier questions and answers, one new question."""
    messages: list[dict[str, str]] = [{"role": "system", "content": "Answer briefly."}]
    for i in range(1, n + 1):
        messages.append({"role": "user", "content": f"Question {i} about {topic}?"})
        if i < n:
            messages.append({"role": "assistant", "content": f"Answer {i} about {topic}."})
    return {"model": model, "messages": messages}


def chats(standin: OllamaStandIn) -> int:
    return sum(1 for r in standin.forwarded if r.path in ("/v1/chat/completions", "/api/chat"))


async def ask(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> tuple[str, str]:
    """Send a chat; which upstream answered (its position) and why."""
    async with http.post(url + path, json=body) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
        return resp.headers["X-Fognode-Upstream"], resp.headers["X-Fognode-Upstream-Reason"]


async def test_turn_n_goes_where_turn_n_minus_1_went_while_that_upstream_is_free(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gateway = await make_gateway(pair[0].url, upstream_urls=[s.url for s in pair])
    # Two conversations start on different upstreams (equals take turns) ...
    assert await ask(http, gateway.url, turn(1, topic="the sea")) == ("1", "loaded,least-busy")
    assert await ask(http, gateway.url, turn(1, topic="stars")) == ("2", "loaded,least-busy")
    # ... and stay there, turn after turn, although taking turns would swap them.
    for n in (2, 3, 4):
        assert await ask(http, gateway.url, turn(n, topic="stars")) == ("2", "loaded,affinity")
        assert await ask(http, gateway.url, turn(n, topic="the sea")) == ("1", "loaded,affinity")
    assert chats(pair[0]) == chats(pair[1]) == 4
    # Ollama's native chat is a conversation too.
    native = {**turn(1, topic="rain"), "stream": False}
    first = await ask(http, gateway.url, native, "/api/chat")
    native["messages"] += [
        {"role": "assistant", "content": "It falls."},
        {"role": "user", "content": "Why?"},
    ]
    second = await ask(http, gateway.url, native, "/api/chat")
    assert second == (first[0], "loaded,affinity")


async def test_affinity_yields_when_its_upstream_is_saturated_or_down(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    first, second = pair
    gateway = await make_gateway(
        first.url, upstream_urls=[s.url for s in pair], upstream_check_interval=0.2
    )
    url = gateway.url
    # Conversations A and C on upstream 1, B on upstream 2.
    assert (await ask(http, url, turn(1, topic="A")))[0] == "1"
    assert (await ask(http, url, turn(1, topic="B")))[0] == "2"
    assert (await ask(http, url, turn(1, topic="C")))[0] == "1"
    # A's next turn holds upstream 1 (it answers one token at a time, on a gate).
    first.gate = asyncio.Queue()
    held = asyncio.create_task(http.post(f"{url}/v1/chat/completions", json=turn(2, topic="A")))
    await wait_until(lambda: first.active == 1, "A's turn 2 on upstream 1")
    # C's next turn does not queue behind it: upstream 2 has the model loaded and is idle.
    assert await ask(http, url, turn(2, topic="C")) == ("2", "loaded,least-busy,affinity-yielded")
    for _ in range(100):
        first.gate.put_nowait(None)
    resp = await held
    assert resp.headers["X-Fognode-Upstream-Reason"] == "loaded,affinity"
    await resp.read()
    resp.release()
    first.gate = None
    # C's conversation now lives on upstream 2, where its turn 2 was answered.
    assert await ask(http, url, turn(3, topic="C")) == ("2", "loaded,affinity")

    # Upstream 2 goes down: the checks notice, and C's next turn goes to 1.
    await second.stop()
    pool = gateway.app[UPSTREAM]
    await wait_until(lambda: pool.members[1].healthy is False, "upstream 2 marked down")
    assert await ask(http, url, turn(4, topic="C")) == ("1", "loaded,only,affinity-yielded")


async def test_a_loaded_model_wins_over_an_unloaded_one(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    cold, warm = OllamaStandIn(load_on_use=False), OllamaStandIn()
    warm.load(MODEL)
    for standin in (cold, warm):
        await standin.start()
    try:
        gateway = await make_gateway(cold.url, upstream_urls=[cold.url, warm.url])
        for topic in ("a", "b", "c"):  # new conversations, which would take turns
            assert await ask(http, gateway.url, turn(1, topic=topic)) == ("2", "loaded,least-busy")
        assert chats(cold) == 0
        # A model loaded nowhere: the least busy loads it, and is then preferred for it
        # (before the next check says so).
        other = "qwen2.5:0.5b"
        where, why = await ask(http, gateway.url, turn(1, model=other))
        assert why == "cold,least-busy"
        for topic in ("d", "e"):
            assert await ask(http, gateway.url, turn(1, topic=topic, model=other)) == (
                where,
                "loaded,least-busy",
            )
    finally:
        for standin in (cold, warm):
            await standin.stop()


async def test_a_loaded_upstream_at_its_cap_passes_work_to_a_cold_one(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    cold, warm = OllamaStandIn(), OllamaStandIn()
    warm.load(MODEL)
    for standin in (cold, warm):
        await standin.start()
    warm.gate = asyncio.Queue()
    try:
        gateway = await make_gateway(
            cold.url, upstream_urls=[cold.url, warm.url], upstream_max_concurrent=1
        )
        held = asyncio.create_task(
            http.post(f"{gateway.url}/v1/chat/completions", json={**turn(1), "stream": True})
        )
        await wait_until(lambda: warm.active == 1, "a request on the warm upstream")
        # Waiting behind a request of unknown length, or loading: loading is sooner.
        assert await ask(http, gateway.url, turn(1, topic="x")) == ("1", "cold,soonest")
        for _ in range(100):
            warm.gate.put_nowait(None)
        resp = await held
        await resp.read()
        resp.release()
    finally:
        for standin in (cold, warm):
            await standin.stop()


async def test_affinity_off_is_least_busy_only(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    gateway = await make_gateway(
        pair[0].url, upstream_urls=[s.url for s in pair], upstream_affinity=False
    )
    answered = [await ask(http, gateway.url, turn(n)) for n in (1, 2, 3, 4)]
    assert answered == [("1", "loaded,least-busy"), ("2", "loaded,least-busy")] * 2


async def test_one_callers_conversation_is_not_anothers(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    """Keys include the caller: B sending A's messages learns nothing from routing."""
    alice, bob = new_key(), new_key()
    gateway = await make_gateway(
        pair[0].url,
        upstream_urls=[s.url for s in pair],
        auth="firebase",
        api_keys=[entry_for(alice, "alice", admin=False), entry_for(bob, "bob", admin=False)],
    )

    async def as_(key: str, body: dict[str, Any]) -> str:
        headers = {"Authorization": f"Bearer {key}"}
        async with http.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200
            return r.headers["X-Fognode-Upstream-Reason"]

    assert await as_(alice, turn(1)) == "loaded,least-busy"
    assert await as_(bob, turn(2)) == "loaded,least-busy"
    assert await as_(alice, turn(2)) == "loaded,affinity"


async def test_choices_are_explained_in_the_access_log_and_metrics(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = await make_gateway(
        pair[0].url, upstream_urls=[s.url for s in pair], metrics_public=True
    )
    with caplog.at_level(logging.INFO, logger="fognode.access"):
        await ask(http, gateway.url, turn(1))
        await ask(http, gateway.url, turn(2))
    lines = [r for r in caplog.records if r.name == "fognode.access" and "chat" in r.getMessage()]
    assert len(lines) == 2
    assert f"upstream={pair[0].url} route=loaded,affinity" in lines[1].getMessage()
    fields = lines[1].fields  # type: ignore[attr-defined]
    assert (fields["upstream"], fields["route"]) == (pair[0].url, "loaded,affinity")
    async with http.get(f"{gateway.url}/metrics") as resp:
        metrics = await resp.text()
    assert 'fognode_upstream_choices_total{reason="loaded,affinity",upstream="1"} 1.0' in metrics
    # The client is told a position, never the upstream's address.
    async with http.post(f"{gateway.url}/v1/chat/completions", json=turn(3)) as resp:
        assert resp.headers["X-Fognode-Upstream"] == "1"
        assert "127.0.0.1" not in json.dumps(dict(resp.headers)) + await resp.text()


async def test_one_upstream_says_nothing_about_routing(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(standin.url)
    async with http.post(f"{gateway.url}/v1/chat/completions", json=turn(2)) as resp:
        assert resp.status == 200
        assert "X-Fognode-Upstream" not in resp.headers
        assert "X-Fognode-Upstream-Reason" not in resp.headers


# --- what the node says is hot ---------------------------------------------------------


async def test_models_list_says_which_models_are_loaded(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    first, second = pair
    second.unload(MODEL)
    first.load("nomic-embed-text")
    single = await make_gateway(first.url)
    async with http.get(f"{single.url}/v1/models") as resp:
        listed = {m["id"]: m["fognode"] for m in (await resp.json())["data"]}
    ps = {m["name"]: m for m in first.running_models()}
    hot = listed[MODEL]
    assert hot["loaded"] is True and hot["loaded_on"] == 1
    assert (hot["size"], hot["size_vram"]) == (ps[MODEL]["size"], ps[MODEL]["size_vram"])
    assert hot["expires_at"] == ps[MODEL]["expires_at"]
    assert listed["qwen2.5:0.5b"] == {
        "loaded": False,
        "size": None,
        "size_vram": None,
        "expires_at": None,
        "loaded_on": 0,
    }
    assert listed["nomic-embed-text:latest"]["loaded"] is True

    # Two upstreams: loaded on one of them; a chat on the other loads it there too.
    both = await make_gateway(first.url, upstream_urls=[first.url, second.url])
    async with http.get(f"{both.url}/v1/models") as resp:
        assert {m["id"]: m["fognode"]["loaded_on"] for m in (await resp.json())["data"]} == {
            MODEL: 1,
            "qwen2.5:0.5b": 0,
            "nomic-embed-text:latest": 1,
        }

    # An OpenAI-compatible upstream (llama.cpp's server): what it serves is loaded.
    openai_kind = await make_gateway(first.url, upstream_kind="openai")
    async with http.get(f"{openai_kind.url}/v1/models") as resp:
        entries = (await resp.json())["data"]
    assert all(m["fognode"]["loaded"] and m["fognode"]["size"] is None for m in entries)


async def test_api_ps_is_the_union_over_upstreams(
    pair: tuple[OllamaStandIn, OllamaStandIn],
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    first, second = pair
    second.load("qwen2.5:0.5b")
    single = await make_gateway(first.url)
    async with http.get(f"{single.url}/api/ps") as resp:
        assert await resp.json() == {"models": first.running_models()}  # as Ollama sends it
    both = await make_gateway(first.url, upstream_urls=[first.url, second.url])
    async with http.get(f"{both.url}/api/ps") as resp:
        names = [m["name"] for m in (await resp.json())["models"]]
    assert sorted(names) == [MODEL, "qwen2.5:0.5b"]  # llama3.2:1b once, though on both


async def test_the_announcement_carries_the_hot_models(
    pair: tuple[OllamaStandIn, OllamaStandIn], make_gateway: GatewayFactory
) -> None:
    first, second = pair
    second.load("qwen2.5:0.5b")
    gateway = await make_gateway(
        first.url, upstream_urls=[first.url, second.url], upstream_check_interval=0.2
    )
    app = gateway.app
    base = announcement(Settings(), port=gateway.port, ca_sha256="", auth="none", capacity=4)
    announcer = NodeAnnouncer(
        base, AnnounceOptions(10, 5), admission=app[ADMISSION], pool=app[UPSTREAM]
    )
    txt = announcer.current_txt()
    assert txt.hot == (MODEL, "qwen2.5:0.5b") and txt.hot_count == 2
    assert txt.to_properties()["hot"] == f"{MODEL},qwen2.5:0.5b"
    # Ollama unloads it; the next check notices.
    second.unload("qwen2.5:0.5b")
    await wait_until(lambda: announcer.current_txt().hot == (MODEL,), "qwen2.5 no longer hot")
