"""The OpenAI-compatible routes are forwarded to Ollama's /v1 API unchanged."""

from __future__ import annotations

import json

import aiohttp
import pytest

from fognode.gateway.server import RunningServer
from tests.ollama_standin import OllamaStandIn

CHAT = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}


def sse_events(raw: bytes) -> list[str]:
    return [e[len("data: ") :] for e in raw.decode().split("\n\n") if e.startswith("data: ")]


async def test_chat_completion_non_streaming(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == standin.reply
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len(standin.reply.split())


async def test_chat_completion_streaming_is_relayed_event_for_event(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    body = dict(CHAT, stream=True, stream_options={"include_usage": True})
    async with http.post(f"{gateway.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["X-Accel-Buffering"] == "no"
        raw = await resp.read()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks if c["choices"])
    assert text == standin.reply
    assert chunks[-1]["usage"]["completion_tokens"] == len(standin.reply.split())
    assert all(c["system_fingerprint"] == "fp_ollama" for c in chunks)


async def test_completions_streaming_and_not(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    req = {"model": "llama3.2:1b", "prompt": "Once upon a time"}
    async with http.post(f"{gateway.url}/v1/completions", json=req) as resp:
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["text"] == standin.reply
    async with http.post(f"{gateway.url}/v1/completions", json=dict(req, stream=True)) as resp:
        events = sse_events(await resp.read())
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == standin.reply


async def test_embeddings(gateway: RunningServer, http: aiohttp.ClientSession) -> None:
    req = {"model": "nomic-embed-text", "input": ["a", "b"]}
    async with http.post(f"{gateway.url}/v1/embeddings", json=req) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][0]["object"] == "embedding"


async def test_models_list_and_one_model_with_slashes(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.url}/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == list(standin.models)
    standin.models = (*standin.models, "hf.co/org/model:Q4_K_M")
    async with http.get(f"{gateway.url}/v1/models/hf.co/org/model:Q4_K_M") as resp:
        assert resp.status == 200
        assert (await resp.json())["id"] == "hf.co/org/model:Q4_K_M"
    assert standin.last("/v1/models/hf.co/org/model:Q4_K_M").method == "GET"


async def test_request_body_reaches_ollama_byte_for_byte(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    """Unknown fields (Ollama's options, keep_alive, think) are not dropped or rewritten."""
    raw = (
        b'{"model":"llama3.2:1b","messages":[{"role":"user","content":"hi","images":["aGk="]}],'
        b'"options":{"num_ctx":8192,"temperature":0.1},"keep_alive":"10m","think":true,'
        b'"x_future_field":  [1, 2.50, null]}'
    )
    async with http.post(
        f"{gateway.url}/v1/chat/completions?trace=1",
        data=raw,
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200
    forwarded = standin.last("/v1/chat/completions")
    assert forwarded.body == raw
    assert forwarded.query == "trace=1"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "nope:1b", "messages": [{"role": "user", "content": "x"}]},
        ),
        ("/v1/completions", {"model": "nope:1b", "prompt": "x"}),
        ("/v1/embeddings", {"model": "nope:1b", "input": "x"}),
    ],
)
async def test_ollama_model_not_found_passes_through_intact(
    gateway: RunningServer,
    standin: OllamaStandIn,
    http: aiohttp.ClientSession,
    path: str,
    body: dict[str, object],
) -> None:
    """The client matches on Ollama's wording, so status and body must survive as sent."""
    async with http.post(gateway.url + path, json=body) as via_gateway:
        gateway_status, gateway_body = via_gateway.status, await via_gateway.read()
    async with http.post(standin.url + path, json=body) as direct:
        direct_status, direct_body = direct.status, await direct.read()
    assert gateway_status == direct_status == 404
    assert gateway_body == direct_body
    assert b"model 'nope:1b' not found, try pulling it first" in gateway_body
