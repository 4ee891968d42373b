"""Answers checked against OpenAI's published OpenAPI document, as a strict client decodes them.

The SpeziLLMFog app's client is generated from OpenAI's document and decodes
required fields strictly; a field it requires that an answer lacks is a
decoding error in the app. These helpers validate real answers (bodies,
every stream chunk, model lists, errors) against the document's own schemas
with jsonschema (openapi-schema-validator's OpenAPI 3.0 dialect, which knows
``nullable``). The document is a copy in the tests (``tests/support/openai_spec/``),
never fetched.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from openapi_schema_validator import OAS30Validator

DOCUMENT = Path(__file__).parent / "openai_spec" / "openapi.yaml"

# What each kind of answer is, in the document's words.
SCHEMAS = {
    "chat": "CreateChatCompletionResponse",
    "chat_chunk": "CreateChatCompletionStreamResponse",
    "completion": "CreateCompletionResponse",
    "completion_chunk": "CreateCompletionResponse",
    "embedding": "CreateEmbeddingResponse",
    "models": "ListModelsResponse",
    "model": "Model",
    "error": "ErrorResponse",
}


@functools.cache
def document() -> dict[str, Any]:
    with DOCUMENT.open("rb") as file:
        loaded: dict[str, Any] = yaml.load(
            file, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        )
    return loaded


def _nullable_enums(node: Any) -> Any:
    """``nullable: true`` beside an ``enum`` admits null, as generated clients decode it.

    OpenAPI 3.0.3 reads ``enum`` strictly (null must be listed); the document
    leaves it out of, for example, a chunk's ``finish_reason``, which OpenAI
    itself sends as null, and swift-openapi-generator decodes such a field
    as an optional enum. A copy is changed, never the document.
    """
    if isinstance(node, list):
        return [_nullable_enums(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _nullable_enums(value) for key, value in node.items()}
    if (
        out.get("nullable") is True
        and isinstance(out.get("enum"), list)
        and None not in out["enum"]
    ):
        out["enum"] = [*out["enum"], None]
    return out


@functools.cache
def _components() -> dict[str, Any]:
    components: dict[str, Any] = _nullable_enums(document()["components"])
    return components


@functools.cache
def _validator(name: str) -> OAS30Validator:
    # The schema refers to the others as "#/components/schemas/...": the
    # components travel with it, so every reference resolves in the document.
    schema = {"$ref": f"#/components/schemas/{name}", "components": _components()}
    return OAS30Validator(schema)


def _streamed_completion(chunk: Any) -> Any:
    """A streamed completion's chunk as the document can check it.

    The document says streamed and non-streamed completions share one shape,
    whose ``finish_reason`` is not nullable; OpenAI's own streams send
    ``null`` until the last chunk. That one value is taken as OpenAI sends it.
    """
    if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
        return chunk
    choices = []
    for choice in chunk["choices"]:
        if isinstance(choice, dict) and choice.get("finish_reason", "") is None:
            choice = dict(choice, finish_reason="stop")
        choices.append(choice)
    return dict(chunk, choices=choices)


def problems(kind: str, instance: Any) -> list[str]:
    """Where ``instance`` breaks the document's schema for ``kind`` (empty: it decodes)."""
    if kind == "completion_chunk":
        instance = _streamed_completion(instance)
    errors = sorted(_validator(SCHEMAS[kind]).iter_errors(instance), key=lambda e: list(e.path))
    return [f"{kind} at /{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in errors]


def assert_valid(kind: str, instance: Any) -> None:
    found = problems(kind, instance)
    assert not found, "\n".join([*found, json.dumps(instance)[:1000]])


def sse_data(raw: bytes) -> Iterator[str]:
    """The data of each event of an SSE body (any of CR, LF, CRLF as line end)."""
    text = raw.decode()
    for event in text.replace("\r\n", "\n").replace("\r", "\n").split("\n\n"):
        data = [
            line[5:].removeprefix(" ") for line in event.split("\n") if line.startswith("data:")
        ]
        if data:
            yield "\n".join(data)


def stream_problems(kind: str, raw: bytes) -> list[str]:
    """Every chunk of a stream checked; ``[DONE]`` ends it; an error event is an ErrorResponse."""
    found: list[str] = []
    for data in sse_data(raw):
        if data == "[DONE]":
            continue
        chunk = json.loads(data)
        found += problems("error" if "error" in chunk else kind, chunk)
    return found


# --- a battery of real requests, every answer checked --------------------------


async def battery(
    http: aiohttp.ClientSession,
    base: str,
    *,
    model: str,
    embedding_model: str | None = None,
    headers: dict[str, str] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, list[str]]:
    """Send what a client of the OpenAI API sends and check every answer.

    The problems found, by what was asked; an error answer is checked as
    OpenAI's ErrorResponse. Generic over the upstream: the same battery runs
    against Ollama's stand-in (both stream formats) and the embedded model.
    ``options``: more arguments of each request (TLS: ``ssl``, ``server_hostname``).
    """
    messages = [{"role": "user", "content": "Why is the sky blue? One sentence."}]
    chat = {"model": model, "messages": messages, "max_tokens": 12}
    completion = {"model": model, "prompt": "The sky is", "max_tokens": 12}
    asks: list[tuple[str, str, str, dict[str, Any] | None]] = [
        ("chat", "POST", "/v1/chat/completions", chat),
        ("chat_chunk", "POST", "/v1/chat/completions", dict(chat, stream=True)),
        (
            "chat_chunk",
            "POST",
            "/v1/chat/completions",
            dict(chat, stream=True, stream_options={"include_usage": True}),
        ),
        ("completion", "POST", "/v1/completions", completion),
        ("completion_chunk", "POST", "/v1/completions", dict(completion, stream=True)),
        ("models", "GET", "/v1/models", None),
        ("model", "GET", f"/v1/models/{model}", None),
        ("error", "GET", "/v1/models/no-such-model:1b", None),
        ("error", "POST", "/v1/chat/completions", dict(chat, model="no-such-model:1b")),
        ("error", "POST", "/v1/chat/completions", {"model": model}),
        ("error", "GET", "/v1/no-such-route", None),
    ]
    if embedding_model is not None:
        embed = {"model": embedding_model, "input": ["the sky", "the sea"]}
        asks.append(("embedding", "POST", "/v1/embeddings", embed))
    found: dict[str, list[str]] = {}
    for kind, method, path, body in asks:
        async with http.request(
            method, base + path, json=body, headers=headers, **(options or {})
        ) as resp:
            raw = await resp.read()
            media = resp.content_type
            status = resp.status
        where = f"{method} {path} -> {status}"
        if status >= 400:
            checked = problems("error", _json_or_text(raw))
        elif kind == "error":
            checked = [f"expected an error, got {status}"]
        elif media == "text/event-stream":
            checked = stream_problems(kind, raw)
        else:
            checked = problems(kind, _json_or_text(raw))
        found.setdefault(kind, []).extend(f"{where}: {p}" for p in checked)
    return found


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")
