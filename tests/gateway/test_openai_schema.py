"""Every answer decodes in a strict client: OpenAI's OpenAPI document checks them.

The SpeziLLMFog app's client is generated from OpenAI's document and decodes
required fields strictly. Real answers through the in-process gateway, from
Ollama's stand-in in both of its stream formats, are validated against the
document's schemas (tests/openai_schema.py): non-streamed answers, every
stream chunk, model lists and errors. The embedded model runs the same
battery in tests/test_embedded.py.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from fognode.gateway.node.server import RunningServer
from tests.support.gateway import GatewayFactory
from tests.support.ollama_standin import WIRE_FORMATS, OllamaStandIn
from tests.support.openai_schema import assert_valid, battery


@pytest.mark.parametrize("wire", WIRE_FORMATS)
async def test_every_answer_decodes_strictly(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession, wire: str
) -> None:
    standin.wire = wire
    found = await battery(
        http, gateway.url, model="llama3.2:1b", embedding_model="nomic-embed-text:latest"
    )
    counts = {kind: len(p) for kind, p in found.items()}
    assert not any(counts.values()), f"{counts}\n" + "\n".join(
        line for kind in found for line in found[kind][:6]
    )


# What OpenAI-compatible servers answer when they refuse (status, content type, body):
# llama.cpp's server (an integer code, no param), its 503 while the model loads,
# llama-cpp-python's FastAPI (detail as a string or as pydantic's list), Ollama's
# native shape, a plain-text and an HTML answer from something in between.
UPSTREAM_ERRORS = {
    "llama.cpp 400": (
        400,
        "application/json",
        b'{"error":{"code":400,"message":"\'messages\' is required",'
        b'"type":"invalid_request_error"}}',
        "'messages' is required",
    ),
    "llama.cpp 503 loading": (
        503,
        "application/json",
        b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}',
        "Loading model",
    ),
    "llama.cpp 500": (
        500,
        "application/json",
        b'{"error":{"code":500,"message":"context size exceeded","type":"server_error"}}',
        "context size exceeded",
    ),
    "FastAPI detail": (404, "application/json", b'{"detail":"Not Found"}', "Not Found"),
    "pydantic 422": (
        422,
        "application/json",
        b'{"detail":[{"type":"missing","loc":["body","messages"],"msg":"Field required",'
        b'"input":{}}]}',
        "body.messages: Field required",
    ),
    "Ollama native": (500, "application/json", b'{"error":"unexpected EOF"}', "unexpected EOF"),
    "plain text": (502, "text/plain", b"upstream connect error\n", "upstream connect error"),
    "HTML": (
        503,
        "text/html",
        b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
        "503",
    ),
}


@pytest.mark.parametrize("case", list(UPSTREAM_ERRORS))
async def test_upstream_errors_reach_the_client_in_openais_shape(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, case: str
) -> None:
    status, media, body, message = UPSTREAM_ERRORS[case]

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body, content_type=media)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        gateway = await make_gateway(f"http://{host}:{port}", upstream_kind="openai")
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(f"{gateway.url}/v1/chat/completions", json=chat) as resp:
            assert resp.status == status
            assert resp.content_type == "application/json"
            answer = await resp.json()
    finally:
        await runner.cleanup()
    assert_valid("error", answer)
    assert message in answer["error"]["message"]
    if media != "application/json":
        assert body.decode().strip() not in answer["error"]["message"] or media == "text/plain"


async def test_spec_valid_requests_are_served_and_reach_ollama_as_it_reads_them(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    """Integers written as decimals, an assistant's refusal without content, an
    empty tool_calls, max_tokens 0: OpenAI's document accepts them all; Ollama's
    Go decoder would refuse the decimals and a null content, so it gets integers
    and the refusal as content (compat.py)."""
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "user", "content": "why is the sky blue?"},
    ]
    chat = {"model": "llama3.2:1b", "messages": messages, "n": 1.0, "max_tokens": 3.0, "seed": 7.0}
    async with http.post(f"{gateway.url}/v1/chat/completions", json=chat) as resp:
        assert resp.status == 200, await resp.text()
        assert_valid("chat", await resp.json())
    sent = json.loads(standin.last("/v1/chat/completions").body)
    assert (sent["n"], sent["max_tokens"], sent["seed"]) == (1, 3, 7)
    assert all(type(sent[k]) is int for k in ("n", "max_tokens", "seed"))
    assert [m["content"] for m in sent["messages"][1:3]] == ["I can't help with that.", None]
    for path, body in (
        (
            "/v1/chat/completions",
            {"model": "llama3.2:1b", "messages": messages[:1], "max_tokens": 0},
        ),
        ("/v1/completions", {"model": "llama3.2:1b", "prompt": [1.0, 2.0], "max_tokens": 0}),
        ("/v1/embeddings", {"model": "nomic-embed-text:latest", "input": "x", "dimensions": 8.0}),
    ):
        async with http.post(gateway.url + path, json=body) as resp:
            assert resp.status == 200, (path, await resp.text())
    assert json.loads(standin.last("/v1/completions").body)["prompt"] == [1, 2]
    assert json.loads(standin.last("/v1/embeddings").body)["dimensions"] == 8
