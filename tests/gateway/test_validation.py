"""Bad requests are refused with OpenAI's 400 body before anything reaches Ollama."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from fognode.gateway.node.server import RunningServer
from tests.support.gateway import GatewayFactory
from tests.support.ollama_standin import OllamaStandIn

USER = [{"role": "user", "content": "hi"}]


def assert_openai_error(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


BAD_CHAT: list[tuple[str, dict[str, Any], str | None, str]] = [
    ("no model", {"messages": USER}, "model", "missing_required_parameter"),
    ("empty model", {"model": "", "messages": USER}, "model", "invalid_value"),
    ("blank model", {"model": "   ", "messages": USER}, "model", "invalid_value"),
    ("model not a string", {"model": 7, "messages": USER}, "model", "invalid_type"),
    ("no messages", {"model": "m"}, "messages", "missing_required_parameter"),
    ("empty messages", {"model": "m", "messages": []}, "messages", "invalid_value"),
    ("messages not a list", {"model": "m", "messages": "hi"}, "messages", "invalid_type"),
    ("message not an object", {"model": "m", "messages": ["hi"]}, "messages[0]", "invalid_type"),
    (
        "unknown role",
        {"model": "m", "messages": [{"role": "wizard", "content": "x"}]},
        "messages[0].role",
        "invalid_value",
    ),
    (
        "missing content",
        {"model": "m", "messages": [{"role": "user"}]},
        "messages[0]",
        "invalid_value",
    ),
    (
        "content wrong type",
        {"model": "m", "messages": [{"role": "user", "content": 5}]},
        "messages[0].content",
        "invalid_value",
    ),
    (
        "text part without text",
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
        "messages[0].content",
        "invalid_value",
    ),
    (
        "temperature too high",
        {"model": "m", "messages": USER, "temperature": 2.5},
        "temperature",
        "invalid_value",
    ),
    (
        "temperature negative",
        {"model": "m", "messages": USER, "temperature": -0.1},
        "temperature",
        "invalid_value",
    ),
    (
        "temperature as string",
        {"model": "m", "messages": USER, "temperature": "0.7"},
        "temperature",
        "invalid_type",
    ),
    ("top_p above 1", {"model": "m", "messages": USER, "top_p": 1.5}, "top_p", "invalid_value"),
    ("n zero", {"model": "m", "messages": USER, "n": 0}, "n", "invalid_value"),
    (
        "max_tokens negative",  # 0 is allowed: OpenAI's document sets no minimum
        {"model": "m", "messages": USER, "max_tokens": -1},
        "max_tokens",
        "invalid_value",
    ),
    (
        "penalty out of range",
        {"model": "m", "messages": USER, "presence_penalty": 3},
        "presence_penalty",
        "invalid_value",
    ),
    (
        "stream not bool",
        {"model": "m", "messages": USER, "stream": "yes"},
        "stream",
        "invalid_type",
    ),
    ("stop of numbers", {"model": "m", "messages": USER, "stop": [1, 2]}, "stop", "invalid_value"),
]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [case[1:] for case in BAD_CHAT],
    ids=[case[0] for case in BAD_CHAT],
)
async def test_bad_chat_requests_get_400_and_never_reach_ollama(
    gateway: RunningServer,
    standin: OllamaStandIn,
    http: aiohttp.ClientSession,
    body: dict[str, Any],
    param: str | None,
    code: str,
) -> None:
    async with http.post(f"{gateway.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        error = assert_openai_error(await resp.json())
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert standin.forwarded == []


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": [1.5]}, "prompt"),  # [] is allowed
        ("/v1/completions", {"model": "m", "prompt": [1, "a"]}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": "x", "logprobs": 9}, "logprobs"),
        ("/v1/embeddings", {"model": "m"}, "input"),
        ("/v1/embeddings", {"model": "m", "input": {"a": 1}}, "input"),
        (
            "/v1/embeddings",
            {"model": "m", "input": "x", "encoding_format": "hex"},
            "encoding_format",
        ),
        ("/v1/embeddings", {"model": "", "input": "x"}, "model"),
    ],
)
async def test_bad_completion_and_embedding_requests(
    gateway: RunningServer,
    standin: OllamaStandIn,
    http: aiohttp.ClientSession,
    path: str,
    body: dict[str, Any],
    param: str,
) -> None:
    async with http.post(gateway.url + path, json=body) as resp:
        assert resp.status == 400
        assert assert_openai_error(await resp.json())["param"] == param
    assert standin.forwarded == []


UNPARSEABLE = [
    ("empty", b"", "empty_body"),
    ("syntax", b"{not json", "invalid_json"),
    ("array", b'["model", "m"]', "invalid_json"),
    ("null", b"null", "invalid_json"),
    (
        "invalid utf-8",
        b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        "invalid_encoding",
    ),
]
# An empty body on the native API is Ollama's to judge (it answers 400 itself).
UNPARSEABLE_CASES = [
    (path, raw, code, f"{path} {name}")
    for path in ("/v1/chat/completions", "/api/chat")
    for name, raw, code in UNPARSEABLE
    if not (path == "/api/chat" and raw == b"")
]


@pytest.mark.parametrize(
    ("path", "raw", "code"),
    [case[:3] for case in UNPARSEABLE_CASES],
    ids=[case[3] for case in UNPARSEABLE_CASES],
)
async def test_unparseable_bodies(
    gateway: RunningServer,
    standin: OllamaStandIn,
    http: aiohttp.ClientSession,
    path: str,
    raw: bytes,
    code: str,
) -> None:
    async with http.post(
        gateway.url + path, data=raw, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 400
        assert assert_openai_error(await resp.json())["code"] == code
    assert standin.forwarded == []


async def test_valid_edge_cases_pass(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    """What OpenAI allows must not be refused: tool calls, parts, token prompts."""
    chats = [
        {"model": "llama3.2:1b", "messages": USER, "temperature": 0, "top_p": 1, "n": 1},
        {"model": "llama3.2:1b", "messages": USER, "temperature": 2, "stop": ["\n", "END"]},
        {
            "model": "llama3.2:1b",
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "hi"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "content": "42", "tool_call_id": "1"},
            ],
        },
    ]
    for body in chats:
        async with http.post(f"{gateway.url}/v1/chat/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
    async with http.post(
        f"{gateway.url}/v1/completions", json={"model": "llama3.2:1b", "prompt": [1, 2, 3]}
    ) as resp:
        assert resp.status == 200
    assert len(standin.forwarded) == 4


async def test_body_limit_413_by_content_length_and_by_stream(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(standin.url, max_body_bytes=4096)
    big = b'{"model":"m","messages":[{"role":"user","content":"' + b"x" * 5000 + b'"}]}'
    async with http.post(f"{gateway.url}/v1/chat/completions", data=big) as resp:
        assert resp.status == 413
        error = assert_openai_error(await resp.json())
        assert "4096" in error["message"] and error["code"] == "request_too_large"

    async def chunked():  # type: ignore[no-untyped-def]
        yield big[:3000]
        yield big[3000:]

    async with http.post(f"{gateway.url}/api/chat", data=chunked()) as resp:
        assert resp.status == 413
        assert assert_openai_error(await resp.json())["code"] == "request_too_large"
    assert standin.forwarded == []


async def test_unknown_route_and_wrong_method_are_openai_shaped(
    gateway: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{gateway.url}/v1/nothing-here") as resp:
        assert resp.status == 404
        assert assert_openai_error(await resp.json())["code"] == "unknown_route"
    async with http.get(f"{gateway.url}/v1/chat/completions") as resp:
        assert resp.status == 405
        assert "POST" in resp.headers["Allow"]
        assert assert_openai_error(await resp.json())["code"] == "method_not_allowed"
