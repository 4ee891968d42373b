"""The documented exceptions to "the client's bytes go upstream, the upstream's come back".

fognode is a relay, but some of its clients cannot change (the SpeziLLMFog
app ships in phones) and its upstreams change under it (Ollama 0.32.6 moved
``role`` to the first stream chunk). Each edit here exists for one such
client and touches only the bytes it must; everything else passes untouched.

Requests:

* ``max_completion_tokens`` is also sent as ``max_tokens`` to upstreams whose
  OpenAI endpoint ignores it (Ollama), so the app's length limit takes
  effect;
* integers written as decimals (``"n": 2.0``, token ids ``[1.0]``, which
  OpenAI's document admits) go upstream as integers, and to Ollama an assistant message
  without content (a refusal, an empty ``tool_calls``) goes with its refusal
  or ``""`` as content: Ollama's Go decoder refuses both
  (:func:`normalise_request`). Such a body is written anew; every other body
  goes as the client wrote it.

Responses:

* every streamed chat chunk whose delta has no ``role`` gets
  ``"role":"assistant"``: the app keeps a delta only when its role is
  ``assistant``, and Ollama >= 0.32.6 and llama.cpp send it only in the first
  chunk (:func:`fill_assistant_role`, applied by the SSE framer);
* a missing model is worded ``model 'x' not found, try pulling it first``
  whatever the upstream said, because that is the only form the app
  recognises (:func:`model_not_found_message`).

Strict decoding. The app's client is generated from OpenAI's OpenAPI
document and decodes every field the document requires (docs/client-contract.md);
local upstreams leave some out. What they omit is filled in, nothing else
is changed, and nothing is made up: a body or chunk without a list of
``choices`` is no answer (an error, ``{}``) and passes as sent.

* a streamed chat chunk gets what a chunk requires: ``id``, ``object``,
  ``created``, ``model``, ``choices[]`` with ``delta``, ``index`` and
  ``finish_reason`` (null, or one of OpenAI's reasons: any other reason, a
  server's own word for an ending, is ``stop``); a ``logprobs`` object gets
  ``content`` and ``refusal``; a ``service_tier`` OpenAI's schema does not
  list is left out (:class:`ChunkEditor`, which also fills the role above);
  a streamed completion's chunk gets ``logprobs`` likewise;
* a non-streamed chat answer gets ``choices[].logprobs`` and
  ``message.refusal`` (null), a completion ``choices[].logprobs``
  (:func:`fix_chat_answer`, :func:`fix_completion_answer`); the answer is
  then written anew, compact, in the upstream's key order;
* the node's model list gets each entry's ``object``, ``created`` (0:
  unknown, when the upstream does not say) and ``owned_by``
  (:func:`fill_model_list`);
* an upstream's error answer on the OpenAI routes is OpenAI's
  ``ErrorResponse`` (``message``, ``type``, ``param``, ``code``, the last
  two strings or null), with the upstream's message kept; a body that is not
  JSON is described, never passed on (:func:`openai_error_body`).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ... import safejson
from ..core.errors import error_body, error_type_for
from .request_models import INTEGER_FIELDS
from .sse import LineEdit


@dataclass(frozen=True)
class RouteEdits:
    """What a route's relay may change: nothing, for most routes."""

    # Makes the edit of each SSE data line of one stream (it may learn as it
    # goes), given the model the request named.
    stream_edit: Callable[[str | None], LineEdit] | None = None
    # Fills in a non-streamed JSON answer, parsed; True if it changed it.
    answer_edit: Callable[[dict[str, Any]], bool] | None = None
    openai_errors: bool = True  # error bodies in OpenAI's shape (else Ollama's)
    # Inference routes: a missing model in the words the SpeziLLMFog app matches.
    reword_missing_model: bool = False

    def line_edit_for(self, model: str | None) -> LineEdit | None:
        """The edit of one stream's data lines (None: the stream passes as sent)."""
        return self.stream_edit(model) if self.stream_edit is not None else None


# --- requests ------------------------------------------------------------------

# Upstream kinds whose OpenAI chat endpoint reads max_tokens but not
# max_completion_tokens (Ollama's openai.ChatCompletionRequest has no such
# field). llama.cpp's server (the embedded engine) and other OpenAI-compatible
# servers (vLLM, OpenAI itself) understand it, and some refuse max_tokens.
IGNORES_MAX_COMPLETION_TOKENS = frozenset({"ollama"})

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


def normalise_request(body: bytes, parsed: dict[str, Any], upstream_kind: str) -> bytes:
    """Integers as integers; for Ollama, every assistant message with a content.

    Checked on the parsed body (a few lookups); only a body that needs it is
    parsed again from ``body`` (which may carry the usage stage's edit),
    changed and written anew. ``parsed`` is changed alike, for the edits
    after this one.
    """
    floats = [key for key in INTEGER_FIELDS if type(parsed.get(key)) is float]
    tokens = [key for key in ("prompt", "input") if _has_float_tokens(parsed.get(key))]
    empty = _contentless_assistants(parsed) if upstream_kind == "ollama" else []
    if not floats and not tokens and not empty:
        return body
    current = safejson.loads(body)
    for target in (parsed, current):
        for key in floats:
            target[key] = int(target[key])
        for key in tokens:
            target[key] = _integral_tokens(target[key])
        for index in empty:
            message = target["messages"][index]
            refusal = message.get("refusal")
            message["content"] = refusal if isinstance(refusal, str) else ""
    return dump_answer(current)


def _has_float_tokens(value: object) -> bool:
    """Token ids written as decimals: ``[1.0, 2.0]`` or ``[[1.0]]``."""
    if not isinstance(value, list):
        return False
    return any(type(item) is float or _has_float_tokens(item) for item in value)


def _integral_tokens(value: Any) -> Any:
    if isinstance(value, list):
        return [_integral_tokens(item) for item in value]
    return int(value) if type(value) is float else value


def _contentless_assistants(parsed: dict[str, Any]) -> list[int]:
    """Assistant messages Ollama refuses: content null or missing, and no tool_calls."""
    messages = parsed.get("messages")
    if not isinstance(messages, list):
        return []
    return [
        index
        for index, message in enumerate(messages)
        if isinstance(message, dict)
        and message.get("role") == "assistant"
        and message.get("content") is None
        and message.get("tool_calls") is None
    ]


def chat_request_edit(body: bytes, parsed: dict[str, Any], upstream_kind: str) -> bytes:
    """The chat route's request edits, in order."""
    return add_max_tokens(normalise_request(body, parsed, upstream_kind), parsed, upstream_kind)


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


# --- responses: what a strict client requires ------------------------------------

# OpenAI's finish reasons, as its document lists them (a chat's, a completion's).
CHAT_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
COMPLETION_FINISH_REASONS = frozenset({"stop", "length", "content_filter"})
SERVICE_TIERS = frozenset({"scale", "default"})


def _is_int(value: object) -> bool:
    return type(value) is int


class _Fill:
    """What a chunk or answer lacks, filled the same way for one whole answer:
    one id, one creation time, the model the request named."""

    __slots__ = ("created", "id", "model")

    def __init__(self, model: str | None, id_prefix: str) -> None:
        self.id = f"{id_prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model or ""

    def top(self, obj: dict[str, Any], object_name: str) -> bool:
        changed = False
        if not isinstance(obj.get("id"), str):
            obj["id"], changed = self.id, True
        if obj.get("object") != object_name:
            obj["object"], changed = object_name, True
        if not _is_int(obj.get("created")):
            obj["created"], changed = self.created, True
        if not isinstance(obj.get("model"), str):
            obj["model"], changed = self.model, True
        tier = obj.get("service_tier")
        if tier is not None and not (isinstance(tier, str) and tier in SERVICE_TIERS):
            del obj["service_tier"]
            changed = True
        return changed


def _fix_logprobs(choice: dict[str, Any], chat: bool) -> bool:
    """``logprobs`` present (null when unknown); a chat's object has both lists."""
    if "logprobs" not in choice:
        choice["logprobs"] = None
        return True
    logprobs = choice["logprobs"]
    if logprobs is None:
        return False
    if not isinstance(logprobs, dict):
        choice["logprobs"] = None
        return True
    if chat and ("content" not in logprobs or "refusal" not in logprobs):
        logprobs.setdefault("content", None)
        logprobs.setdefault("refusal", None)
        return True
    return False


def _fix_finish(choice: dict[str, Any], reasons: frozenset[str], *, nullable: bool) -> bool:
    reason = choice.get("finish_reason", False)
    if reason is None and nullable:
        return False
    if isinstance(reason, str) and reason in reasons:
        return False
    choice["finish_reason"] = None if nullable and reason is False else "stop"
    return True


def _fix_index(choice: dict[str, Any], position: int) -> bool:
    if _is_int(choice.get("index")):
        return False
    choice["index"] = position
    return True


# What a fix did: nothing, only the role of a delta (which the byte-level
# fill_assistant_role writes in the upstream's own style), or more.
UNCHANGED, ROLE_ONLY, REWRITTEN = 0, 1, 2


def fix_chat_chunk(obj: dict[str, Any], fill: _Fill) -> int:
    """Fill in one streamed chat chunk (see the module docstring)."""
    changed = fill.top(obj, "chat.completion.chunk")
    role = False
    for position, choice in enumerate(obj["choices"]):
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            choice["delta"] = delta = {}
            changed = True
        if "role" not in delta:
            delta["role"] = "assistant"
            role = True
        changed |= _fix_index(choice, position)
        changed |= _fix_finish(choice, CHAT_FINISH_REASONS, nullable=True)
        if "logprobs" in choice:
            changed |= _fix_logprobs(choice, chat=True)
    return REWRITTEN if changed else ROLE_ONLY if role else UNCHANGED


def _fix_completion(obj: dict[str, Any], fill: _Fill, *, streamed: bool) -> bool:
    """A completion, streamed (a null finish_reason until the last chunk) or whole."""
    changed = fill.top(obj, "text_completion")
    for position, choice in enumerate(obj["choices"]):
        if not isinstance(choice, dict):
            continue
        if not isinstance(choice.get("text"), str):
            choice["text"], changed = "", True
        changed |= _fix_index(choice, position)
        changed |= _fix_finish(choice, COMPLETION_FINISH_REASONS, nullable=streamed)
        changed |= _fix_logprobs(choice, chat=False)
    return changed


def fix_completion_chunk(obj: dict[str, Any], fill: _Fill) -> int:
    """Fill in one streamed completion chunk."""
    return REWRITTEN if _fix_completion(obj, fill, streamed=True) else UNCHANGED


def _answer_fill(obj: dict[str, Any], id_prefix: str) -> _Fill | None:
    """How a whole answer is filled in; None for what is no answer (an error
    body, anything without a list of choices), which passes as sent."""
    if not isinstance(obj.get("choices"), list):
        return None
    model = obj.get("model")
    return _Fill(model if isinstance(model, str) else None, id_prefix)


def fix_chat_answer(obj: dict[str, Any]) -> bool:
    """Fill in a non-streamed chat answer; True if anything was missing."""
    fill = _answer_fill(obj, "chatcmpl")
    if fill is None:
        return False
    changed = fill.top(obj, "chat.completion")
    for position, choice in enumerate(obj["choices"]):
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if not isinstance(message, dict):
            choice["message"] = message = {}
            changed = True
        for key, value in (("role", "assistant"), ("content", None), ("refusal", None)):
            if key not in message:
                message[key] = value
                changed = True
        changed |= _fix_index(choice, position)
        changed |= _fix_finish(choice, CHAT_FINISH_REASONS, nullable=False)
        changed |= _fix_logprobs(choice, chat=True)
    return changed


def fix_completion_answer(obj: dict[str, Any]) -> bool:
    """Fill in a non-streamed completion; True if anything was missing."""
    fill = _answer_fill(obj, "cmpl")
    return fill is not None and _fix_completion(obj, fill, streamed=False)


def fill_model_list(listing: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``ListModelsResponse``: every entry a ``Model`` (in place)."""
    listing["object"] = "list"
    entries = listing.get("data")
    if not isinstance(entries, list):
        listing["data"] = entries = []
    for entry in entries:
        if isinstance(entry, dict):
            fill_model(entry)
    return listing


def fill_model(entry: dict[str, Any]) -> bool:
    """One ``Model`` (in place; True if it lacked something): llama-cpp-python's
    entries have no ``created``, and 0 says unknown."""
    if "error" in entry and "id" not in entry:
        return False
    changed = False
    if entry.get("object") != "model":
        entry["object"], changed = "model", True
    if not _is_int(entry.get("created")):
        entry["created"], changed = 0, True
    if not isinstance(entry.get("owned_by"), str):
        entry["owned_by"], changed = "fognode", True
    return changed


def dump_answer(obj: object) -> bytes:
    """An answer written anew: compact, UTF-8 as sent, keys in the upstream's order."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


# --- streams: each chunk checked, most of them without parsing ----------------------

_CHUNK_FIXES = {"chat": (fix_chat_chunk, "chatcmpl"), "completion": (fix_completion_chunk, "cmpl")}
_VALUE_KEYS = {"chat": ("content", "reasoning_content", "reasoning"), "completion": ("text",)}
_STRING_BODY = re.compile(rb'(?:[^"\\]|\\.)*', re.S)


def _plain_string_body(middle: bytes) -> bool:
    """Whether ``middle`` can stand between a JSON string's quotes and end it
    there: no unescaped quote, no backslash that would escape the closing one."""
    if b'"' not in middle and b"\\" not in middle:
        return True
    rest = middle.replace(b"\\\\", b"")
    return not rest.endswith(b"\\") and b'"' not in rest.replace(b'\\"', b"")


def _value_span(line: bytes, key: bytes) -> tuple[int, int] | None:
    """Where the string value of ``key`` starts and ends in ``line``, if the
    key occurs exactly once with a string value (a key: quotes in strings are escaped)."""
    spans = []
    quoted = b'"' + key + b'"'
    at = line.find(quoted)
    while at >= 0:
        colon = _COLON_QUOTE.match(line, at + len(quoted))
        if colon is not None:
            start = colon.end()
            end = _STRING_BODY.match(line, start)
            assert end is not None  # matches the empty string at least
            spans.append((start, end.end()))
        at = line.find(quoted, at + 1)
    if len(spans) != 1 or not line.startswith(b'"', spans[0][1]):
        return None
    return spans[0]


_COLON_QUOTE = re.compile(rb'\s*:\s*"')


@dataclass(frozen=True, slots=True)
class _Template:
    """A chunk as the upstream writes them, around its one changing string:
    a line ``head + text + tail`` has the same structure, and is sent as
    ``out_head + text + out_tail``."""

    head: bytes
    tail: bytes
    out_head: bytes
    out_tail: bytes


class ChunkEditor:
    """The strict-decoding edit of one stream's data lines (a chat's or a completion's).

    A chunk is parsed and filled in (:func:`fix_chat_chunk`) unless it has
    the structure of the last one parsed, differing only in its one
    changing string (the delta's ``content``, a completion's ``text``): an
    upstream writes its content chunks alike, so most lines cost two
    comparisons and no parse. The answer is exact either way: a line equal to
    the template around a well-formed string body parses to the same
    structure, so it needs the same edit.
    """

    __slots__ = ("_fill", "_fix", "_keys", "_template")

    def __init__(self, model: str | None, kind: str = "chat") -> None:
        self._fix, prefix = _CHUNK_FIXES[kind]
        self._keys = _VALUE_KEYS[kind]
        self._fill = _Fill(model, prefix)
        self._template: _Template | None = None

    def __call__(self, line: bytes) -> bytes:
        template = self._template
        if (
            template is not None
            and line.startswith(template.head)
            and line.endswith(template.tail)
            and len(line) >= len(template.head) + len(template.tail)
        ):
            middle = line[len(template.head) : len(line) - len(template.tail)]
            if _plain_string_body(middle):
                return template.out_head + middle + template.out_tail
        return self._parse(line)

    def _parse(self, line: bytes) -> bytes:
        payload = line[5:]  # after "data:"
        try:
            obj = safejson.loads(payload)
        except ValueError:
            return line  # [DONE], or not JSON: not a chunk to fill in
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
            return line  # no chunk (an in-band error event, say): passes as sent
        change = self._fix(obj, self._fill)
        if change == UNCHANGED:
            out = line
        elif change == ROLE_ONLY:
            out = fill_assistant_role(line)
        else:
            out = b"data: " + dump_answer(obj)
        self._learn(line, out, obj)
        return out

    def _learn(self, line: bytes, out: bytes, obj: dict[str, Any]) -> None:
        self._template = None
        choices = obj["choices"]
        if len(choices) != 1 or not isinstance(choices[0], dict):
            return
        holder = choices[0].get("delta", choices[0])
        if not isinstance(holder, dict):
            return
        keys = [key for key in self._keys if isinstance(holder.get(key), str)]
        if len(keys) != 1:
            return
        key = keys[0].encode()
        span, out_span = _value_span(line, key), _value_span(out, key)
        if span is None or out_span is None:
            return
        self._template = _Template(
            line[: span[0]], line[span[1] :], out[: out_span[0]], out[out_span[1] :]
        )


def chat_stream_edit(model: str | None) -> LineEdit:
    return ChunkEditor(model, "chat")


def completion_stream_edit(model: str | None) -> LineEdit:
    return ChunkEditor(model, "completion")


# --- errors: OpenAI's ErrorResponse, whatever the upstream wrote ---------------------

# A plain-text error up to this long, on one line, is quoted in the message.
_QUOTABLE_TEXT = 200


def error_message(body: bytes, media: str = "application/json") -> str | None:
    """The message in an upstream's error body, whatever its shape: OpenAI's
    ``error.message``, Ollama's ``error``, FastAPI's ``detail`` (a string or
    pydantic's list), a bare ``message``, or a short line of plain text.
    None when there is none to quote (HTML, a long or binary body)."""
    try:
        data = safejson.loads(body)
    except ValueError:
        data = None
        if media.startswith("text/plain"):
            text = body.decode(errors="replace").strip()
            if text and len(text) <= _QUOTABLE_TEXT and text.isprintable():
                return text
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    detail = data.get("detail")
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and isinstance(item.get("msg"), str):
                where = ".".join(str(p) for p in item.get("loc", ()) if isinstance(p, str | int))
                parts.append(f"{where}: {item['msg']}" if where else item["msg"])
        return "; ".join(parts) or None
    if isinstance(data.get("message"), str):
        return str(data["message"])
    return None


def _optional_string(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if _is_int(value):
        return str(value)  # llama.cpp's "code": 400
    return None


def openai_error_body(status: int, body: bytes, media: str) -> dict[str, Any] | None:
    """The ErrorResponse to send for an upstream's error answer; None when the
    upstream's own body is one already (it is passed as sent)."""
    try:
        data = safejson.loads(body)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if (
        isinstance(error, dict)
        and isinstance(error.get("message"), str)
        and isinstance(error.get("type"), str)
        and all(
            k in error and (error[k] is None or isinstance(error[k], str))
            for k in ("param", "code")
        )
    ):
        return None
    message = error_message(body, media)
    if message is None:
        kind = media or "no content type"
        message = (
            f"The upstream answered {status} with a body that is not JSON "
            f"({kind}, {len(body)} bytes)."
        )
    if isinstance(error, dict):
        kind_of = error.get("type")
        return error_body(
            message,
            status=status,
            type=kind_of if isinstance(kind_of, str) else error_type_for(status),
            param=_optional_string(error.get("param")),
            code=_optional_string(error.get("code")),
        )
    return error_body(message, status=status, code="upstream_error")
