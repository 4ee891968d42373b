"""The OpenAI-compatible routes are forwarded to Ollama's /v1 API unchanged."""

from __future__ import annotations

import json
import re

import aiohttp
import pytest

from fognode.gateway.node.server import RunningServer
from tests.support.helpers import CHAT, chat_deltas
from tests.support.ollama_standin import WIRE_FORMATS, OllamaStandIn

# The SpeziLLMFog app's pattern for a missing model (LLMFogError.swift).
APP_MODEL_NOT_FOUND = r"model '([\w:]+)' not found, try pulling it first"


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


@pytest.mark.parametrize("wire", WIRE_FORMATS)
async def test_chat_completion_streaming_is_relayed_event_for_event(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession, wire: str
) -> None:
    standin.wire = wire
    body = dict(CHAT, stream=True, stream_options={"include_usage": True})
    async with http.post(f"{gateway.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["X-Accel-Buffering"] == "no"
        raw = await resp.read()
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == standin.reply
    assert chunks[-1]["choices"] == []  # the usage chunk, as Ollama sends it
    assert chunks[-1]["usage"]["completion_tokens"] == len(standin.reply.split())
    assert all(c["system_fingerprint"] == "fp_ollama" for c in chunks)
    # Whatever Ollama's version, every delta names its role (the SpeziLLMFog
    # app drops deltas without it).
    assert {d.get("role") for d in chat_deltas(raw)} == {"assistant"}
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}


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


@pytest.mark.parametrize("wire", WIRE_FORMATS)
@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "nope:1b", "messages": [{"role": "user", "content": "x"}]},
        ),
        (
            "/v1/chat/completions",
            {"model": "nope:1b", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        ),
        ("/v1/completions", {"model": "nope:1b", "prompt": "x"}),
        ("/v1/embeddings", {"model": "nope:1b", "input": "x"}),
    ],
)
async def test_model_not_found_is_worded_as_the_app_expects(
    gateway: RunningServer,
    standin: OllamaStandIn,
    http: aiohttp.ClientSession,
    path: str,
    body: dict[str, object],
    wire: str,
) -> None:
    """The SpeziLLMFog app recognises a missing model only by Ollama's classic
    words; current Ollama says just `model 'x' not found`. Either way, the
    client gets the classic words in OpenAI's error shape."""
    standin.wire = wire
    async with http.post(standin.url + path, json=body) as direct:
        assert direct.status == 404
        assert "not found" in (await direct.json())["error"]["message"]
    async with http.post(gateway.url + path, json=body) as via_gateway:
        assert via_gateway.status == 404
        error = (await via_gateway.json())["error"]
    assert error == {
        "message": "model 'nope:1b' not found, try pulling it first",
        "type": "not_found_error",
        "param": None,
        "code": "model_not_found",
    }
    assert re.search(APP_MODEL_NOT_FOUND, error["message"])
