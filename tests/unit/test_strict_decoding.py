"""The strict-decoding edits (gateway/pipeline/compat.py), held to OpenAI's document.

What the SpeziLLMFog app's generated client requires of an answer is what
OpenAI's OpenAPI document requires (tests/openai_schema.py checks with it).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.gateway.pipeline.compat import (
    ChunkEditor,
    fill_model,
    fill_model_list,
    fix_chat_answer,
    fix_completion_answer,
    openai_error_body,
)
from tests.support.openai_schema import assert_valid, problems

# How real upstreams write a chat chunk: Ollama's Go encoder (current: role in
# the first delta only; legacy: in every one), llama.cpp's server (choices
# first, no role after the first), llama-cpp-python (spaced, logprobs null).
STYLES = {
    "ollama": (
        lambda text, first: {
            "id": "chatcmpl-412",
            "object": "chat.completion.chunk",
            "created": 1795459078,
            "model": "llama3.2:1b",
            "system_fingerprint": "fp_ollama",
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": text} if first else {"content": text},
                    "finish_reason": None,
                }
            ],
        },
        (",", ":"),
    ),
    "llama.cpp": (
        lambda text, first: {
            "choices": [{"finish_reason": None, "index": 0, "delta": {"content": text}}],
            "created": 1795459078,
            "id": "chatcmpl-x9",
            "model": "gpt-3.5-turbo",
            "system_fingerprint": "b5000-abc",
            "object": "chat.completion.chunk",
        },
        (",", ":"),
    ),
    "llama-cpp-python": (
        lambda text, first: {
            "id": "chatcmpl-7",
            "model": "smollm2:135m",
            "created": 1795459078,
            "object": "chat.completion.chunk",
            "choices": [
                {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
            ],
        },
        (", ", ": "),
    ),
    # What a careless server might write: no id, no index, an unknown finish
    # reason, a logprobs object without refusal, a service tier OpenAI does not list.
    "careless": (
        lambda text, first: {
            "object": "chat.completion.chunk",
            "model": "m",
            "service_tier": "auto",
            "choices": [
                {
                    "delta": {"content": text},
                    "finish_reason": "eos" if first else None,
                    "logprobs": {"content": []},
                }
            ],
        },
        (",", ":"),
    ),
}


def line_of(chunk: dict[str, Any], separators: tuple[str, str]) -> bytes:
    return b"data: " + json.dumps(chunk, separators=separators, ensure_ascii=False).encode()


def parsed(line: bytes) -> Any:
    return json.loads(line[len(b"data:") :])


texts = st.text(
    alphabet=st.sampled_from(["a", " ", '"', "\\", "é", "\n", "{", "}", "\u2028"]), max_size=12
)


@settings(max_examples=200, deadline=None)
@given(style=st.sampled_from(sorted(STYLES)), contents=st.lists(texts, min_size=1, max_size=8))
def test_every_chunk_decodes_and_the_fast_path_agrees_with_parsing(
    style: str, contents: list[str]
) -> None:
    make, separators = STYLES[style]
    editor = ChunkEditor("llama3.2:1b")  # learns the upstream's template as it goes
    for index, text in enumerate(contents):
        line = line_of(make(text, index == 0), separators)
        out = editor(line)
        alone = ChunkEditor("llama3.2:1b")(line)  # parses: no template yet
        chunk, expected = parsed(out), parsed(alone)
        assert_valid("chat_chunk", chunk)
        for volatile in ("id", "created"):  # made up per stream when the upstream has none
            if volatile not in make(text, False):
                chunk.pop(volatile), expected.pop(volatile)
        assert chunk == expected
        assert chunk["choices"][0]["delta"]["content"] == text
        assert chunk["choices"][0]["delta"]["role"] == "assistant"


def test_an_unchanged_chunk_is_passed_byte_for_byte() -> None:
    make, separators = STYLES["ollama"]
    editor = ChunkEditor("llama3.2:1b")
    for text in ("The", " sky", ' "blue"'):
        line = line_of(make(text, True), separators)
        assert editor(line) == line


def test_a_made_up_id_and_time_stay_the_same_for_the_whole_stream() -> None:
    make, separators = STYLES["careless"]
    editor = ChunkEditor("m")
    chunks = [parsed(editor(line_of(make(t, i == 0), separators))) for i, t in enumerate("abc")]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert [c["choices"][0]["finish_reason"] for c in chunks] == ["stop", None, None]
    assert all("service_tier" not in c for c in chunks)


def test_other_lines_pass_as_sent() -> None:
    editor = ChunkEditor("m")
    for line in (b"data: [DONE]", b"data: not json", b'data: {"error":{"message":"x"}}'):
        assert editor(line) == line


def test_usage_chunk_and_completion_chunks_decode() -> None:
    usage = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [],
    }
    usage["usage"] = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert_valid("chat_chunk", parsed(ChunkEditor("m")(line_of(usage, (",", ":")))))
    editor = ChunkEditor("m", "completion")
    for text in ("The", " sky"):
        chunk = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}
        chunk["choices"] = [{"text": text, "index": 0, "finish_reason": None}]
        out = parsed(editor(line_of(chunk, (",", ":"))))
        assert out["choices"][0]["logprobs"] is None and out["choices"][0]["text"] == text
        assert_valid("completion_chunk", out)


def test_whole_answers_get_what_a_strict_client_requires() -> None:
    chat = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
    }
    assert problems("chat", chat)
    assert fix_chat_answer(chat) and not fix_chat_answer(chat)
    assert_valid("chat", chat)
    assert (
        chat["choices"][0]["message"]["refusal"] is None and chat["choices"][0]["logprobs"] is None
    )
    completion = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"text": "hi", "index": 0, "finish_reason": "stop"}],
    }
    assert fix_completion_answer(completion) and not fix_completion_answer(completion)
    assert_valid("completion", completion)
    error = {"error": {"message": "x", "type": "t", "param": None, "code": None}}
    assert not fix_chat_answer(error) and not fix_completion_answer(error)


def test_model_entries_get_created_and_owner() -> None:
    listing = {
        "object": "list",
        "data": [{"id": "smollm2:135m", "object": "model", "owned_by": "me", "permissions": []}],
    }
    assert_valid("models", fill_model_list(listing))
    entry = {"id": "smollm2:135m", "object": "model"}
    assert fill_model(entry) and not fill_model(entry)
    assert_valid("model", entry)
    assert entry["created"] == 0  # unknown


def test_errors_in_openais_shape_keep_the_message() -> None:
    valid = b'{"error":{"message":"m","type":"t","param":null,"code":null}}'
    assert openai_error_body(400, valid, "application/json") is None  # passed as sent
    llama = b'{"error":{"code":400,"message":"bad","type":"invalid_request_error"}}'
    shaped = openai_error_body(400, llama, "application/json")
    assert shaped == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": None, "code": "400"}
    }
    html = b"<html><body>secret internals</body></html>"
    shaped = openai_error_body(502, html, "text/html")
    assert shaped is not None
    assert_valid("error", shaped)
    assert "secret" not in shaped["error"]["message"] and "text/html" in shaped["error"]["message"]
