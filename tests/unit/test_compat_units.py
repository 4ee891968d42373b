"""Unit tests for the byte-level compatibility edits and the SSE framer.

These edits run on every streamed chunk the app receives, on bytes rather
than parsed JSON; the tables below are the shapes real upstreams send
(Ollama: compact Go JSON; llama-cpp-python: Python's `": "` separators;
swift-openapi-runtime: pretty-printed requests).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.gateway.pipeline.admission import Admission, Ticket
from fognode.gateway.pipeline.compat import (
    _fill_every_delta,
    add_max_tokens,
    fill_assistant_role,
    is_model_not_found,
    model_not_found_message,
)
from fognode.gateway.pipeline.sse import SseFramer
from tests.support.spezillmfog_client import SwiftSseDecoder


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # Ollama >= 0.32.6, a content chunk after the first
        (
            b'data: {"choices":[{"index":0,"delta":{"content":" sky"},"finish_reason":null}]}',
            b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":" sky"},'
            b'"finish_reason":null}]}',
        ),
        # its finish chunk: an empty delta
        (
            b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
            b'data: {"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":"stop"}]}',
        ),
        # llama-cpp-python: Python's separators
        (
            b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}',
            b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]}',
        ),
        # a form neither encoder writes takes the exact, slower path
        (
            b'data: {"choices":[{"delta" :{"content":"hi"}}]}',
            b'data: {"choices":[{"delta" :{"role":"assistant","content":"hi"}}]}',
        ),
        (b'data: {"delta" : { } }', b'data: {"delta" : { "role":"assistant"} }'),
        # already there (first chunk, older Ollama): untouched
        (
            b'data: {"choices":[{"delta":{"role":"assistant","content":"The"}}]}',
            b'data: {"choices":[{"delta":{"role":"assistant","content":"The"}}]}',
        ),
        (
            b'data: {"choices":[{"delta":{"content":null,"role":"assistant"}}]}',
            b'data: {"choices":[{"delta":{"content":null,"role":"assistant"}}]}',
        ),
        # several choices, one with a role and one without
        (
            b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"a"}},'
            b'{"index":1,"delta":{"content":"b"}}]}',
            b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"a"}},'
            b'{"index":1,"delta":{"role":"assistant","content":"b"}}]}',
        ),
        # "role" and "delta" inside content are escaped strings, not keys
        (
            b'data: {"choices":[{"delta":{"content":"say \\"role\\": and \\"delta\\":{"}}]}',
            b'data: {"choices":[{"delta":{"role":"assistant",'
            b'"content":"say \\"role\\": and \\"delta\\":{"}}]}',
        ),
        (
            b'data: {"choices":[{"delta":{"content":"\\"role"}}]}',
            b'data: {"choices":[{"delta":{"role":"assistant","content":"\\"role"}}]}',
        ),
        # tool calls stream as deltas too
        (
            b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":'
            b'{"arguments":"{}"}}]}}]}',
            b'data: {"choices":[{"delta":{"role":"assistant","tool_calls":[{"index":0,'
            b'"function":{"arguments":"{}"}}]}}]}',
        ),
        # no delta at all: the usage chunk, [DONE], an error
        (b'data: {"choices":[],"usage":{"total_tokens":3}}', None),
        (b"data: [DONE]", None),
        (b'data: {"error":{"message":"x"}}', None),
    ],
)
def test_fill_assistant_role(line: bytes, expected: bytes | None) -> None:
    out = fill_assistant_role(line)
    if expected is None:
        assert out is line
        return
    assert out == expected
    payload = json.loads(out.removeprefix(b"data: "))
    deltas = [c["delta"] for c in payload.get("choices", [])] if "choices" in payload else []
    assert all(d["role"] == "assistant" for d in deltas)


@given(st.text(max_size=40), st.sampled_from([(",", ":"), (", ", ": ")]))
@settings(max_examples=200, deadline=None)
def test_fill_assistant_role_keeps_any_content(content: str, separators: tuple[str, str]) -> None:
    """Whatever the model writes, the edit adds the role and changes nothing else."""
    chunk = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    line = b"data: " + json.dumps(chunk, separators=separators).encode()
    payload = json.loads(fill_assistant_role(line).removeprefix(b"data: "))
    assert payload["choices"][0]["delta"] == {"role": "assistant", "content": content}


@st.composite
def chat_chunks(draw: st.DrawFn) -> dict[str, Any]:
    """Chat chunks as any upstream might write them: roles anywhere or nowhere."""
    choices = []
    for index in range(draw(st.integers(0, 3))):
        members = draw(
            st.lists(st.sampled_from(["content", "role", "tool_calls", "refusal"]), unique=True)
        )
        values = {
            "content": draw(st.text(max_size=12)),
            "role": draw(st.sampled_from(["assistant", "role", "delta"])),
            "tool_calls": [{"index": 0, "function": {"arguments": '{"role":1}'}}],
            "refusal": None,
        }
        delta = {name: values[name] for name in members}
        choices.append({"index": index, "delta": delta, "finish_reason": None})
    return {"id": draw(st.sampled_from(["c", "delta", "role"])), "choices": choices}


@given(chat_chunks(), st.sampled_from([(",", ":"), (", ", ": ")]))
@settings(max_examples=300, deadline=None)
def test_fast_path_agrees_with_the_general_one(
    chunk: dict[str, Any], separators: tuple[str, str]
) -> None:
    """The shortcut for one delta never changes what the edit does, only its cost."""
    line = b"data: " + json.dumps(chunk, separators=separators).encode()
    out = fill_assistant_role(line)
    assert json.loads(out.removeprefix(b"data: ")) == json.loads(
        _fill_every_delta(line).removeprefix(b"data: ")
    )
    expected = [dict({"role": "assistant"}, **c["delta"]) for c in chunk["choices"]]
    assert [c["delta"] for c in json.loads(out.removeprefix(b"data: "))["choices"]] == expected


@pytest.mark.parametrize(
    ("body", "kind", "expected"),
    [
        (b'{"model":"m","max_completion_tokens":64}', "ollama", b'{"max_tokens":64,'),
        (b'{\n  "max_completion_tokens" : 5,\n  "model" : "m"\n}', "ollama", b'{"max_tokens":5,'),
        # an OpenAI-compatible server understands it (and some refuse max_tokens),
        # and so does llama.cpp's server, the embedded engine
        (b'{"model":"m","max_completion_tokens":64}', "openai", None),
        (b'{"model":"m","max_completion_tokens":64}', "embedded", None),
        (b'{"model":"m","max_completion_tokens":64,"max_tokens":10}', "ollama", None),
        (b'{"model":"m","max_completion_tokens":true}', "ollama", None),
        (b'{"model":"m"}', "ollama", None),
    ],
)
def test_max_completion_tokens_reaches_ollama(
    body: bytes, kind: str, expected: bytes | None
) -> None:
    out = add_max_tokens(body, json.loads(body), kind)
    if expected is None:
        assert out is body
        return
    assert out.startswith(expected)
    assert out[len(expected) :] == body[body.index(b"{") + 1 :]  # the rest, byte for byte
    parsed = json.loads(out)
    assert parsed["max_tokens"] == parsed["max_completion_tokens"]


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        (b'{"error":"model \'x\' not found"}', True),  # current Ollama, native
        (b'{"error":{"message":"model \'x\' not found","type":"not_found_error"}}', True),
        (b'{"error":"model \\"x\\" not found, try pulling it first"}', True),  # older Ollama
        (b'{"object":"error","message":"The model `x` does not exist.","code":404}', True),  # vLLM
        (b'{"error":{"message":"The model \'x\' does not exist or you do not have access"}}', True),
        (b'{"error":{"message":"model not found","type":"invalid_request_error"}}', True),
        (b"404 page not found", False),  # an unknown route
        (b'{"error":"blob \\"sha256:1\\" not found"}', False),
    ],
)
def test_model_not_found_is_recognised_in_every_wording(body: bytes, missing: bool) -> None:
    assert is_model_not_found(body) is missing


def test_the_one_wording_matches_the_apps_pattern() -> None:
    import re

    from tests.support.spezillmfog_client import MODEL_NOT_FOUND

    assert re.search(MODEL_NOT_FOUND, model_not_found_message("phi4:14b"))
    # The app's pattern cannot match names with '.' or '-' (llama3.2:1b,
    # gemma3-270m): a documented limit of the app, which then shows its
    # "unknown error" with the same message.
    for name in ("llama3.2:1b", "gemma3-270m"):
        assert not re.search(MODEL_NOT_FOUND, model_not_found_message(name))


# --- the SSE framer ----------------------------------------------------------------

STREAM = (
    b'data: {"choices":[{"delta":{"role":"assistant","content":"a"}}]}\n\n'
    b": ping - 2026-11-23 10:00:00\r\n\r\n"  # sse-starlette's keep-alive: an empty event
    b'data: {"choices":[{"delta":{"content":"b"}}]}\r\n\r\n'
    b": a comment inside\n"
    b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
    b"\n"  # a stray blank line
    b"data: [DONE]\n\n"
)


def _frame(pieces: list[bytes]) -> bytes:
    framer = SseFramer(fill_assistant_role)
    return b"".join(framer.feed(p) for p in pieces) + framer.flush()


def test_framer_edits_data_lines_and_drops_empty_events() -> None:
    out = _frame([STREAM])
    events = SwiftSseDecoder().feed(out)
    # Exactly the three chunks: no event without data (the app would stop there).
    assert [e.data is not None for e in events] == [True, True, True]
    assert all(
        json.loads(e.data or "")["choices"][0]["delta"]["role"] == "assistant" for e in events
    )
    # Comments pass, as single lines; every line leaves with LF (sse.py).
    assert b": ping - 2026-11-23 10:00:00\n" in out and b"\r" not in out
    assert out.endswith(b"data: [DONE]\n\n")


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
@settings(max_examples=300, deadline=None)
def test_framer_output_does_not_depend_on_how_the_upstream_splits_it(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert _frame(pieces) == _frame([STREAM])


def test_framer_knows_when_a_comment_fits() -> None:
    framer = SseFramer()
    assert framer.at_boundary
    assert framer.feed(b'data: {"a":') == b""  # half a line: held back
    assert not framer.at_boundary
    assert framer.feed(b"1}\n") == b'data: {"a":1}\n'
    assert not framer.at_boundary and framer.in_event  # the event is not ended yet
    assert framer.feed(b"\n") == b"\n"
    assert framer.at_boundary


def test_framer_gives_up_holding_an_endless_line() -> None:
    framer = SseFramer()
    huge = b"data: " + b"x" * (1 << 20)
    assert framer.feed(huge) == huge
    assert framer.feed(b"more\n\n") == b"more\n\n"  # passed through from now on
    assert not framer.at_boundary


# --- the admission ticket (queue position for heartbeats) ------------------------


async def test_ticket_reports_the_place_in_the_queue() -> None:
    admission = Admission(
        max_concurrent=1, max_queue=10, per_user_concurrent=1, per_user_queue=10, queue_timeout=5
    )
    first = await admission.acquire("alice")
    tickets = [Ticket() for _ in range(3)]
    waiting = [
        asyncio.ensure_future(admission.acquire(uid, t))
        for uid, t in zip(["bob", "carol", "bob"], tickets, strict=True)
    ]
    await asyncio.sleep(0)
    # bob and carol wait for the node; bob's second waits for bob's own slot first.
    assert [await admission.position(t) for t in tickets] == [1, 2, 3]
    admission.release(first)
    bob = await waiting[0]
    assert await admission.position(tickets[0]) is None  # admitted
    assert await admission.position(tickets[1]) == 1
    admission.release(bob)
    carol = await waiting[1]
    assert await admission.position(tickets[2]) == 1  # now first for the node
    admission.release(carol)
    admission.release(await waiting[2])
    assert admission.active == 0 and admission.queued == 0
