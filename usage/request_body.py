"""What a request body says about usage, and the one edit accounting makes to it.

An OpenAI-style upstream reports token figures in a stream only when asked
(``stream_options.include_usage``). :func:`ask_for_usage` adds that to a
streamed request the client did not ask it for, and tells the caller so that
:class:`~fognode.usage.counter.TokenCounter` removes the extra chunk again.
The client's bytes are kept as they are where possible: the key is spliced
in after the opening brace. Only a body that already has a
``stream_options`` object without ``include_usage: true`` is re-serialised
(same keys, same order, same values), since splicing a second
``stream_options`` key would leave the outcome to each upstream's handling
of duplicate keys.

:func:`estimate_tokens` is the reservation a request makes at admission
(see :mod:`.ledger`): a cheap upper-ish guess, settled with the real
figures when the request ends.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from .. import safejson

_INSERTED = b'"stream_options":{"include_usage":true},'

# Characters per token for the prompt estimate: ~4 for English with common
# tokenizers; images in a message are counted at a flat rate.
_CHARS_PER_TOKEN = 4
_IMAGE_TOKENS = 768
_MESSAGE_OVERHEAD = 4


@dataclass(frozen=True, slots=True)
class UsageRequest:
    """``body``: the bytes to send upstream. ``client_asked``: the client asked
    for the usage chunk itself (keep it in the stream). ``added``: the gateway
    asked for it (strip it from the stream)."""

    body: bytes
    client_asked: bool
    added: bool


def ask_for_usage(body: bytes, parsed: Mapping[str, object] | None = None) -> UsageRequest:
    """Make a streamed OpenAI request (chat or completions) ask for usage.

    ``parsed`` is the body already decoded by the caller (the gateway
    validates it anyway); it is decoded here when not given. Non-streamed
    requests are returned unchanged: their answer always carries ``usage``.
    """
    if parsed is None:
        decoded = safejson.loads(body)
        if not isinstance(decoded, dict):
            raise ValueError("the request body is not a JSON object")
        parsed = decoded
    if parsed.get("stream") is not True:
        return UsageRequest(body, client_asked=False, added=False)
    options = parsed.get("stream_options")
    if isinstance(options, Mapping) and options.get("include_usage") is True:
        return UsageRequest(body, client_asked=True, added=False)
    if "stream_options" not in parsed:
        brace = body.index(b"{")
        return UsageRequest(
            body[: brace + 1] + _INSERTED + body[brace + 1 :], client_asked=False, added=True
        )
    rewritten = dict(parsed)
    rewritten["stream_options"] = {
        **(options if isinstance(options, Mapping) else {}),
        "include_usage": True,
    }
    return UsageRequest(
        json.dumps(rewritten, ensure_ascii=False, separators=(",", ":")).encode(),
        client_asked=False,
        added=True,
    )


def estimate_tokens(parsed: Mapping[str, object], *, default_completion: int) -> int:
    """A guess at the tokens a request will use: its prompt plus the most it
    may generate (``max_completion_tokens``, ``max_tokens``, Ollama's
    ``options.num_predict``, else ``default_completion``)."""
    return _prompt_estimate(parsed) + completion_limit(parsed, default_completion)


def estimate_prompt_tokens(parsed: Mapping[str, object]) -> int:
    """The prompt part of :func:`estimate_tokens`, for a record whose stream
    ended before the upstream reported its own figure."""
    return _prompt_estimate(parsed)


def _prompt_estimate(parsed: Mapping[str, object]) -> int:
    chars = 0
    images = 0
    overhead = 0
    for key in ("prompt", "system", "input", "suffix"):
        chars += _text_chars(parsed.get(key))
    messages = parsed.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            overhead += _MESSAGE_OVERHEAD
            content = message.get("content")
            chars += _text_chars(content)
            if isinstance(content, list):
                images += sum(
                    1 for part in content if isinstance(part, Mapping) and "image_url" in part
                )
            native_images = message.get("images")  # Ollama's /api/chat
            if isinstance(native_images, list):
                images += len(native_images)
    native_images = parsed.get("images")  # Ollama's /api/generate
    if isinstance(native_images, list):
        images += len(native_images)
    return math.ceil(chars / _CHARS_PER_TOKEN) + overhead + images * _IMAGE_TOKENS


def _text_chars(value: object) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        total = 0
        for item in value:
            if isinstance(item, str):
                total += len(item)
            elif isinstance(item, Mapping) and isinstance(item.get("text"), str):
                total += len(item["text"])
        return total
    return 0


def completion_limit(parsed: Mapping[str, object], default: int) -> int:
    """The completion part of :func:`estimate_tokens` (the stage adds it to
    the prompt estimate it keeps for the record: each is computed once)."""
    candidates: list[object] = [parsed.get("max_completion_tokens"), parsed.get("max_tokens")]
    options = parsed.get("options")
    if isinstance(options, Mapping):
        candidates.append(options.get("num_predict"))
    for value in candidates:
        if type(value) is int and value > 0:
            return value
    return default
