"""Every request OpenAI's document accepts is accepted, unless a documented reason says otherwise.

Goes through CreateChatCompletionRequest, CreateCompletionRequest and
CreateEmbeddingRequest property by property: for each, values the document
accepts are drawn from its own schema (each branch of a oneOf/anyOf, each
enum value, the bounds, null where nullable, an integer written as a
decimal, each kind of message with only its required fields) and put into
an otherwise minimal valid request, which fognode's validation must accept
(gateway/pipeline/request_models.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from fognode.gateway.core.errors import GatewayError
from fognode.gateway.pipeline.compat import normalise_request
from fognode.gateway.pipeline.request_models import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    validate_body,
)
from tests.support.openai_schema import document

REQUESTS = {
    "CreateChatCompletionRequest": (
        ChatCompletionRequest,
        {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]},
    ),
    "CreateCompletionRequest": (CompletionRequest, {"model": "llama3.2:1b", "prompt": "hi"}),
    "CreateEmbeddingRequest": (EmbeddingRequest, {"model": "nomic-embed-text", "input": "hi"}),
}

# What fognode refuses although the document accepts it, and why (request_models.py).
DOCUMENTED_REFUSALS = {
    ("model", ""): "an empty name names no model on the node",
}


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "allOf" in schema:  # one object of all the parts' properties
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in map(_resolve, schema["allOf"]):
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        return merged
    return schema


def samples(schema: dict[str, Any], depth: int = 0) -> list[Any]:
    """Values the schema accepts: a few of each shape it allows."""
    schema = _resolve(schema)
    out: list[Any] = [None] if schema.get("nullable") else []
    if depth > 5:
        return out
    branches = schema.get("oneOf") or schema.get("anyOf")
    if branches:
        for branch in branches:
            out += samples(branch, depth + 1)
        return out
    if "enum" in schema:
        return out + [v for v in schema["enum"] if v is not None]
    kind = schema.get("type")
    low, high = schema.get("minimum"), schema.get("maximum")
    if kind == "integer":
        values = [v for v in (low, high) if v is not None] or [0, 1]
        return out + values + [float(v) for v in values]  # 2.0: an integer written as a decimal
    if kind == "number":
        return out + ([v for v in (low, high) if v is not None] or [0.5, 1])
    if kind == "boolean":
        return [*out, True, False]
    if kind == "string":
        text = schema.get("example") if isinstance(schema.get("example"), str) else "x"
        return out + (
            [text] if schema.get("minLength", 0) <= len(text) else ["x" * schema["minLength"]]
        )
    if kind == "array":
        items = samples(schema.get("items", {}), depth + 1) or ["x"]
        arrays = [[item] for item in items if item is not None][:12]
        return out + arrays + ([] if schema.get("minItems") else [[]])
    if kind == "object" or "properties" in schema:
        obj = {}
        for name in schema.get("required", []):
            declared = schema.get("properties", {}).get(name, {})
            values = [v for v in samples(declared, depth + 1) if v is not None]
            obj[name] = values[0] if values else None
        return [*out, obj]
    return out


def cases() -> list[tuple[str, str, Any]]:
    found = []
    for request, (_, base) in REQUESTS.items():
        schema = _resolve(document()["components"]["schemas"][request])
        for name, prop in schema["properties"].items():
            for value in samples(prop):
                if name == "messages":
                    value = [*base["messages"], *value] if isinstance(value, list) else value
                found.append((request, name, value))
    return found


CASES = cases()


def test_the_document_is_gone_through_property_by_property() -> None:
    asked = {(request, name) for request, name, _ in CASES}
    for request in REQUESTS:
        schema = _resolve(document()["components"]["schemas"][request])
        assert {(request, name) for name in schema["properties"]} <= asked
    # Every kind of chat message, each with only what the document requires of it.
    roles = {m["role"] for r, n, v in CASES if n == "messages" and isinstance(v, list) for m in v}
    assert {"system", "user", "assistant", "tool", "function", "developer"} <= roles


@pytest.mark.parametrize(("request_name", "name", "value"), CASES, ids=lambda v: str(v)[:40])
def test_a_request_the_document_accepts_is_accepted(
    request_name: str, name: str, value: Any
) -> None:
    model, base = REQUESTS[request_name]
    body = dict(base, **{name: value})
    if isinstance(value, str | int | float | bool | None) and (name, value) in DOCUMENTED_REFUSALS:
        with pytest.raises(GatewayError):
            validate_body(model, body)
        return
    validate_body(model, body)


def test_decimal_integers_and_contentless_assistants_go_upstream_as_it_reads_them() -> None:
    body = {
        "model": "m",
        "n": 1.0,
        "max_tokens": 100.0,
        "seed": 7.0,
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "refusal": "I can't."},
            {"role": "assistant", "content": None, "tool_calls": []},
        ],
    }
    validate_body(ChatCompletionRequest, body)
    raw = json.dumps(body).encode()
    for kind, content in (("ollama", ["I can't.", None]), ("openai", [None, None])):
        parsed = json.loads(raw)
        sent = json.loads(normalise_request(raw, parsed, kind))
        assert [type(sent[k]) for k in ("n", "max_tokens", "seed")] == [int, int, int]
        assert [m["content"] for m in sent["messages"][1:]] == content
        assert parsed == sent
    plain = json.dumps(
        {"model": "m", "n": 1, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    assert normalise_request(plain, json.loads(plain), "ollama") is plain  # as the client wrote it
