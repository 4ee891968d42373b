"""The per-response token counter and the request-body edit, on wire bytes.

Frames are built the way the upstreams write them (OpenAI and llama.cpp's
compact JSON, Python's spaced JSON, vLLM's CRLF separators, Ollama's
NDJSON), and every stream is also fed split at arbitrary points: the result
must not depend on how TCP cut it.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.usage.counter import BodyKind, TokenCounter, Tokens, body_kind
from fognode.usage.request_body import ask_for_usage, estimate_prompt_tokens, estimate_tokens

WORDS = ["Hello", " there", ",", " fog", " node", "!"]
USAGE = {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}


def sse(obj: Any, *, compact: bool = True, sep: bytes = b"\n\n") -> bytes:
    text = json.dumps(obj, separators=(",", ":") if compact else None)
    return b"data: " + text.encode() + sep


def chat_frames(*, usage_chunk: bool, compact: bool = True, sep: bytes = b"\n\n") -> list[bytes]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m"}
    with_null = {"usage": None} if usage_chunk else {}  # OpenAI: null usage on every chunk
    frames = [
        sse(
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
            compact=compact,
            sep=sep,
        )
    ]
    for word in WORDS:
        choice = {"index": 0, "delta": {"content": word}, "finish_reason": None}
        frames.append(sse({**base, "choices": [choice], **with_null}, compact=compact, sep=sep))
    done = {"index": 0, "delta": {}, "finish_reason": "stop"}
    frames.append(sse({**base, "choices": [done], **with_null}, compact=compact, sep=sep))
    if usage_chunk:
        frames.append(sse({**base, "choices": [], "usage": USAGE}, compact=compact, sep=sep))
    frames.append(b"data: [DONE]" + sep)
    return frames


def run(counter: TokenCounter, chunks: list[bytes]) -> bytes:
    out = bytearray()
    for chunk in chunks:
        out += counter.feed(chunk)
        counter.delivered()
    out += counter.finish()
    return bytes(out)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n"])
def test_the_usage_chunk_the_gateway_asked_for_is_removed_and_nothing_else(
    compact: bool, sep: bytes
) -> None:
    frames = chat_frames(usage_chunk=True, compact=compact, sep=sep)
    counter = TokenCounter(BodyKind.SSE, strip_usage_chunk=True)
    out = run(counter, frames)
    assert out == b"".join(f for f in frames if b'"choices":[]' not in f.replace(b" ", b""))
    assert counter.stripped == 1
    assert counter.content_chunks == len(WORDS)
    assert counter.tokens(completed=True) == Tokens(11, 6, partial=False, exact=True)


def test_the_usage_chunk_the_client_asked_for_stays() -> None:
    frames = chat_frames(usage_chunk=True)
    counter = TokenCounter(BodyKind.SSE, strip_usage_chunk=False)
    outputs = [counter.feed(f) for f in frames]
    assert all(out is frame for out, frame in zip(outputs, frames, strict=True))  # no copies
    assert counter.finish() == b""
    assert counter.tokens(completed=True) == Tokens(11, 6, partial=False, exact=True)


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n", b"\r\r"])
def test_one_cut_at_every_byte_changes_nothing(sep: bytes) -> None:
    """Every place one read can end, exhaustively: between the CR and the LF of
    a blank line's CR LF too (the random cuts below found that place once)."""
    frames = chat_frames(usage_chunk=True, sep=sep)
    whole = b"".join(frames)
    expected = whole.replace(frames[-2], b"")
    for cut in range(len(whole) + 1):
        counter = TokenCounter(BodyKind.SSE, strip_usage_chunk=True)
        assert run(counter, split(whole, [cut])) == expected, cut
        assert (counter.content_chunks, counter.stripped) == (len(WORDS), 1), cut


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_splitting_the_stream_anywhere_changes_nothing(cuts: list[int]) -> None:
    frames = chat_frames(usage_chunk=True, sep=b"\r\n\r\n")
    whole = b"".join(frames)
    expected = whole.replace(frames[-2], b"")
    counter = TokenCounter(BodyKind.SSE, strip_usage_chunk=True)
    assert run(counter, split(whole, cuts)) == expected
    assert (counter.content_chunks, counter.stripped) == (len(WORDS), 1)
    assert counter.tokens(completed=True) == Tokens(11, 6, partial=False, exact=True)


def test_byte_by_byte_without_stripping_forwards_every_byte_at_once() -> None:
    whole = b"".join(chat_frames(usage_chunk=True))
    counter = TokenCounter(BodyKind.SSE)
    out = [counter.feed(whole[i : i + 1]) for i in range(len(whole))]
    assert b"".join(out) == whole
    assert counter.finish() == b""
    assert counter.prompt_figure == 11 and counter.completion_figure == 6


def test_a_usage_chunk_split_in_two_is_held_back_until_whole() -> None:
    frames = chat_frames(usage_chunk=True)
    usage = frames[-2]
    counter = TokenCounter(BodyKind.SSE, strip_usage_chunk=True)
    assert counter.feed(frames[-3] + usage[:20]) == frames[-3]
    assert counter.feed(usage[20:]) == b""
    assert counter.feed(frames[-1]) == frames[-1]


def test_a_client_that_leaves_is_charged_what_was_delivered() -> None:
    frames = chat_frames(usage_chunk=True)
    counter = TokenCounter(BodyKind.SSE, strip_usage_chunk=True, prompt_estimate=40)
    for frame in frames[:4]:  # role chunk and three words written
        counter.feed(frame)
        counter.delivered()
    counter.feed(frames[4])  # the fourth word: the write failed, not delivered
    assert counter.tokens(completed=False) == Tokens(40, 3, partial=True, exact=False)


def test_usage_on_a_chunk_with_choices_is_read_and_kept() -> None:
    # llama.cpp's older servers put usage on the last chunk, beside finish_reason.
    last = sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": USAGE})
    counter = TokenCounter(BodyKind.SSE, strip_usage_chunk=True)
    assert counter.feed(last) == last
    assert counter.stripped == 0 and counter.completion_figure == 6


def test_what_counts_as_content() -> None:
    cases = {
        b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n': 0,
        b'data: {"choices":[{"delta":{"content":""}}]}\n\n': 0,
        b'data: {"choices":[{"delta":{"content": "x"}}]}\n\n': 1,
        b'data: {"choices":[{"text":"x","index":0}]}\n\n': 1,
        b'data: {"choices":[{"delta":{"reasoning_content":"hm"}}]}\n\n': 1,
        b'data: {"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c"}]}}]}\n\n': 1,
        # A key inside the answer's own text is escaped, and not a key.
        b'data: {"choices":[{"delta":{"role":"assistant","x":"\\"content\\":\\"y"}}]}\n\n': 0,
        b'data: {"error":{"message":"boom"}}\n\n': 0,
        b"data: [DONE]\n\n": 0,
    }
    for frame, expected in cases.items():
        counter = TokenCounter(BodyKind.SSE)
        counter.feed(frame)
        counter.delivered()
        assert counter.content_chunks == expected, frame


def ndjson(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


@pytest.mark.parametrize("chat", [True, False])
def test_ollama_native_streams(chat: bool) -> None:
    def line(text: str, done: bool) -> bytes:
        entry: dict[str, Any] = {"model": "m", "created_at": "2026-01-01T00:00:00Z"}
        if chat:
            entry["message"] = {"role": "assistant", "content": text}
        else:
            entry["response"] = text
        entry["done"] = done
        if done:
            entry.update(prompt_eval_count=26, eval_count=len(WORDS), eval_duration=7)
        return ndjson(entry)

    whole = b"".join([*(line(w, False) for w in WORDS), line("", True)])
    for cuts in ([], [1, 50, 51, 130], list(range(0, len(whole), 7))):
        counter = TokenCounter(BodyKind.NDJSON, strip_usage_chunk=True)
        assert run(counter, split(whole, cuts)) == whole
        assert counter.content_chunks == len(WORDS)
        assert counter.tokens(completed=True) == Tokens(26, 6, partial=False, exact=True)


def test_a_last_ndjson_line_without_newline_is_read_at_the_end() -> None:
    counter = TokenCounter(BodyKind.NDJSON)
    counter.feed(b'{"response":"a","done":false}\n{"response":"","done":true,"eval_count":1}')
    assert counter.completion_figure is None
    counter.finish()
    assert counter.completion_figure == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"choices": [{"message": {"content": "hi"}}], "usage": USAGE}, (11, 6)),
        (
            {"message": {"content": "hi"}, "done": True, "prompt_eval_count": 3, "eval_count": 2},
            (3, 2),
        ),
        ({"object": "list", "data": [], "usage": {"prompt_tokens": 4, "total_tokens": 4}}, (4, 0)),
        ({"embeddings": [[0.1]], "prompt_eval_count": 5}, (5, 0)),
    ],
)
def test_non_streamed_bodies(body: dict[str, Any], expected: tuple[int, int]) -> None:
    data = json.dumps(body).encode()
    counter = TokenCounter(BodyKind.JSON)
    assert run(counter, split(data, [10, 20])) == data
    tokens = counter.tokens(completed=True)
    assert (tokens.prompt_tokens, tokens.completion_tokens, tokens.exact) == (*expected, True)


def test_a_body_too_big_to_parse_is_relayed_but_not_read() -> None:
    data = json.dumps({"usage": USAGE, "pad": "x" * 100}).encode()
    counter = TokenCounter(BodyKind.JSON, max_json_body=50)
    assert run(counter, [data[:40], data[40:]]) == data
    assert counter.tokens(completed=True).exact is False


def test_body_kind_from_content_type() -> None:
    assert body_kind("text/event-stream; charset=utf-8") is BodyKind.SSE
    assert body_kind("application/x-ndjson") is BodyKind.NDJSON
    assert body_kind("Application/JSON; charset=utf-8") is BodyKind.JSON
    assert body_kind("text/plain") is BodyKind.OTHER


# --- the request body ---------------------------------------------------------------


def test_a_streamed_request_without_stream_options_gets_them_spliced_in() -> None:
    raw = b'  {"model": "m", "stream": true, "messages": [{"role": "user", "content": "\xc3\xa9"}]}'
    result = ask_for_usage(raw)
    assert (result.client_asked, result.added) == (False, True)
    assert result.body.endswith(raw[3:])  # the client's bytes follow untouched
    assert json.loads(result.body) == {**json.loads(raw), "stream_options": {"include_usage": True}}


def test_a_client_that_asked_for_usage_keeps_its_bytes() -> None:
    raw = b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}'
    result = ask_for_usage(raw)
    assert (result.body, result.client_asked, result.added) == (raw, True, False)


@pytest.mark.parametrize("options", [{}, {"include_usage": False}, None, {"other": 1}])
def test_existing_stream_options_are_rewritten_once(options: object) -> None:
    raw = json.dumps({"model": "m", "stream": True, "stream_options": options, "n": 1.5}).encode()
    result = ask_for_usage(raw)
    assert (result.client_asked, result.added) == (False, True)
    decoded = json.loads(result.body)
    assert decoded["stream_options"]["include_usage"] is True
    assert list(decoded) == ["model", "stream", "stream_options", "n"] and decoded["n"] == 1.5
    assert result.body.count(b"stream_options") == 1


@pytest.mark.parametrize("stream", [False, None, "true"])
def test_non_streamed_requests_are_left_alone(stream: object) -> None:
    raw = json.dumps({"model": "m", "stream": stream}).encode()
    assert ask_for_usage(raw).body is raw


def test_estimates() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "x" * 40},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "y" * 40},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
        ],
        "max_completion_tokens": 100,
    }
    assert estimate_prompt_tokens(chat) == 20 + 2 * 4 + 768
    assert estimate_tokens(chat, default_completion=512) == 20 + 8 + 768 + 100
    native = {"prompt": "z" * 8, "options": {"num_predict": 7}}
    assert estimate_tokens(native, default_completion=512) == 2 + 7
    assert estimate_tokens({"prompt": "abc"}, default_completion=512) == 1 + 512


@pytest.mark.parametrize("strip", [True, False])
def test_a_last_event_without_its_blank_line_counts_once_written(strip: bool) -> None:
    counter = TokenCounter(BodyKind.SSE, strip_usage_chunk=strip)
    sent = counter.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"choices":[')
    counter.delivered()
    sent += counter.feed(b'{"delta":{"content":"b"}}]}')
    counter.delivered()
    sent += counter.finish()
    counter.delivered()
    assert sent.endswith(b'"b"}}]}')
    assert counter.tokens(completed=True) == Tokens(0, 2, partial=False, exact=False)


@pytest.mark.parametrize("kind", [BodyKind.SSE, BodyKind.NDJSON, BodyKind.JSON])
def test_upstream_json_nested_too_deep_is_malformed_not_a_recursion_error(
    kind: BodyKind,
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    usage = b'{"choices":[],"usage":{"prompt_tokens":' + deep.encode() + b"}}"
    body = {
        BodyKind.SSE: b"data: " + usage + b"\n\n",
        BodyKind.NDJSON: b'{"done":true,"eval_count":' + deep.encode() + b"}\n",
        BodyKind.JSON: usage,
    }[kind]
    counter = TokenCounter(kind, strip_usage_chunk=True, prompt_estimate=3)
    assert run(counter, [body]) == body  # not a usage chunk it can read: relayed as it is
    assert counter.tokens(completed=True) == Tokens(3, 0, partial=False, exact=False)


@pytest.mark.parametrize("strip", [True, False])
def test_an_event_that_never_ends_is_neither_held_back_nor_kept(strip: bool) -> None:
    counter = TokenCounter(BodyKind.SSE, strip_usage_chunk=strip, max_event=1000)
    first = sse({"choices": [{"delta": {"content": "a"}}]})
    endless = [b'data: {"choices":[{"delta":{"content":"' + b"x" * 400 for _ in range(5)]
    out = counter.feed(first + endless[0])
    counter.delivered()
    for piece in endless[1:]:
        out += counter.feed(piece)
        counter.delivered()
    assert out == first + b"".join(endless)  # everything went out, the last part at once
    assert counter._partial == b""
    out += counter.finish()
    counter.delivered()
    assert counter.tokens(completed=False) == Tokens(0, 1, partial=True, exact=False)


def test_an_ndjson_line_that_never_ends_is_not_kept() -> None:
    counter = TokenCounter(BodyKind.NDJSON, max_event=100)
    line = json.dumps({"message": {"content": "a"}, "done": False}).encode() + b"\n"
    assert run(counter, [line, b"y" * 80, b"y" * 80, line]) == line + b"y" * 160 + line
    assert counter._partial == b""
    assert counter.tokens(completed=True).completion_tokens == 1
