"""The documented exceptions to "the client's bytes go upstream, the upstream's come back".

fognode is a relay, but some of its clients cannot change (the SpeziLLMFog
app ships in phones) and its upstreams change under it (Ollama 0.32.6 moved
``role`` to the first stream chunk). Each edit here exists for one such
client and touches only the bytes it must; everything else passes untouched.

Requests:

* ``max_completion_tokens`` is also sent as ``max_tokens`` to upstreams whose
  OpenAI endpoint ignores it (Ollama, llama-cpp-python's server), so the
  app's length limit takes effect.

Responses:

* every streamed chat chunk whose delta has no ``role`` gets
  ``"role":"assistant"``: the app keeps a delta only when its role is
  ``assistant``, and Ollama >= 0.32.6 and llama.cpp send it only in the first
  chunk (:func:`fill_assistant_role`, applied by the SSE framer);
* a missing model is worded ``model 'x' not found, try pulling it first``
  whatever the upstream said, because that is the only form the app
  recognises (:func:`model_not_found_message`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .sse import LineEdit


@dataclass(frozen=True)
class RouteEdits:
    """What a route's relay may change: nothing, for most routes."""

    sse_line_edit: LineEdit | None = None  # applied to each SSE data line
    openai_errors: bool = True  # error bodies in OpenAI's shape (else Ollama's)
    # Inference routes: a missing model in the words the SpeziLLMFog app matches.
    reword_missing_model: bool = False


# --- requests ------------------------------------------------------------------

# Upstream kinds whose OpenAI chat endpoint reads max_tokens but not
# max_completion_tokens (Ollama's openai.ChatCompletionRequest has no such
# field; llama-cpp-python's request model neither). Generic OpenAI-compatible
# servers (vLLM, OpenAI itself) understand it, and some refuse max_tokens.
IGNORES_MAX_COMPLETION_TOKENS = frozenset({"ollama", "embedded"})

_OBJECT_START = re.compile(rb"\s*\{")


def add_max_tokens(body: bytes, parsed: dict[str, Any], upstream_kind: str) -> bytes:
    """Copy ``max_completion_tokens`` into ``max_tokens`` where the upstream needs it.

    Inserted as the object's first member, byte-level, so the rest of the
    body (and any field the gateway does not know) is sent exactly as the
    client wrote it.
    """
    if upstream_kind not in IGNORES_MAX_COMPLETION_TOKENS or "max_tokens" in parsed:
        return body
    limit = parsed.get("max_completion_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool):
        return body
    start = _OBJECT_START.match(body)
    if start is None:  # parsed as an object, so this cannot happen; stay a relay
        return body
    return body[: start.end()] + b'"max_tokens":%d,' % limit + body[start.end() :]


# --- responses: the role of every delta -----------------------------------------

_DELTA = re.compile(rb'"delta"\s*:\s*\{\s*(\})?')
_ROLE_KEY = re.compile(rb'"role"\s*:')


# The two ways real upstreams write a delta's opening: compact (Ollama's Go
# encoder, llama.cpp's server) and spaced (Python's json.dumps,
# llama-cpp-python), each with the role as it would write it.
_OPENINGS = ((b":{", b'"role":"assistant"', b","), (b": {", b'"role": "assistant"', b", "))


def fill_assistant_role(line: bytes) -> bytes:
    """Give every ``delta`` object of one SSE data line a role, if it has none.

    A quote inside a JSON string is escaped, so ``"delta"`` and ``"role"``
    (a key, or a string that is exactly ``role``) cannot come from string
    content; and in a chat chunk nothing between a delta's opening brace and
    the next delta (or the end of the line) but the delta itself has a
    ``role`` key. So one search per delta is exact without parsing the JSON.

    The common case, one delta in one of the two usual forms, costs one
    search up to the delta and two short ones after it (the delta sits near
    the end of the line); anything else takes the general path.
    """
    at = line.find(b'"delta"')
    if at < 0:
        return line
    after = at + 7
    if line.find(b'"delta"', after) < 0:
        for opening, role, comma in _OPENINGS:
            if line.startswith(opening, after):
                inner = after + len(opening)
                role_at = line.find(b'"role"', inner)
                if role_at == inner:  # the role first, as every upstream writes it
                    return line
                if role_at < 0:
                    if line.startswith(b'"', inner):
                        return line[:inner] + role + comma + line[inner:]
                    if line.startswith(b"}", inner):
                        return line[:inner] + role + line[inner:]
                break
    return _fill_every_delta(line)


def _fill_every_delta(line: bytes) -> bytes:
    """The general path of :func:`fill_assistant_role`: any number of deltas, any spacing."""
    matches = list(_DELTA.finditer(line))
    if not matches:
        return line
    parts: list[bytes] = []
    last = 0
    for index, match in enumerate(matches):
        inner = match.start(1) if match.group(1) is not None else match.end()
        end = matches[index + 1].start() if index + 1 < len(matches) else len(line)
        if _ROLE_KEY.search(line, inner, end) is not None:
            continue
        parts.append(line[last:inner])
        has_members = match.group(1) is None
        parts.append(b'"role":"assistant",' if has_members else b'"role":"assistant"')
        last = inner
    if not parts:
        return line
    parts.append(line[last:])
    return b"".join(parts)


# --- responses: one wording for a missing model ------------------------------------

_MISSING = re.compile(rb"not\s+found|does\s+not\s+exist|no\s+such\s+model|unknown\s+model", re.I)


def model_not_found_message(model: str) -> str:
    """The wording the SpeziLLMFog app matches.

    Its pattern is ``model '([\\w:]+)' not found, try pulling it first``: names
    with ``.`` or ``-`` cannot match it (a limit of the app, documented).
    """
    return f"model '{model}' not found, try pulling it first"


def is_model_not_found(body: bytes) -> bool:
    """Whether an upstream 404 body says a model is missing (any upstream's wording).

    Ollama: ``model 'x' not found`` (current) or ``... try pulling it first``
    (older); vLLM: ``The model `x` does not exist.``; OpenAI: ``The model 'x'
    does not exist or you do not have access to it``; llama.cpp's router:
    ``model not found``. A 404 for anything else (an unknown route) is left
    alone.
    """
    return b"model" in body.lower() and _MISSING.search(body) is not None


def native_error_body(message: str) -> bytes:
    """Ollama's native error shape, which the Ollama clients parse."""
    return json.dumps({"error": message}).encode()
