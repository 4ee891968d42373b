"""Count the tokens of one relayed response, from the bytes on the wire.

The relay hands every upstream chunk to :meth:`TokenCounter.feed` before it
writes it, and writes what ``feed`` returns. The counter:

* counts the **content chunks** (SSE events or NDJSON lines that carry
  generated text, reasoning or tool calls): what a client that leaves
  mid-stream actually received, confirmed by :meth:`TokenCounter.delivered`
  after each successful write;
* picks up the **upstream's own figures** when they come: the OpenAI
  ``usage`` object (the last SSE chunk, or a non-streamed body) and Ollama's
  final ``prompt_eval_count``/``eval_count``;
* optionally **removes the usage chunk** (``"choices": []`` with a ``usage``
  object) that the gateway asked for with ``stream_options.include_usage``
  on behalf of a client that did not ask for it itself. Every other event
  goes out byte for byte: nothing is re-serialised.

It is on the hot path, so it parses JSON only where it must (a chunk with a
``usage`` object, Ollama's ``"done": true`` line, a non-streamed body) and
recognises content with ``bytes.find`` on the keys that carry it
(``bench/usage_counter.py`` measures the cost per chunk).
Events split across chunk boundaries are reassembled for inspection; while
stripping, an incomplete trailing event is held back until it is complete
(a client cannot use half an SSE event anyway), so a usage chunk split in
two is still removed whole.

SSE events end at a blank line; lines end with CR LF, LF or a lone CR, as
the SSE specification says (Ollama and llama.cpp write LF, sse-starlette CR
LF). A CR at the very end of what has arrived is taken as a whole line end;
if an LF follows in the next chunk, it is a stray line end before the next
event, which no count depends on (and the relay's SSE framer takes it as the
rest of that CR LF).

The upstream's bytes are not trusted to be well-formed: JSON is parsed with
:mod:`fognode.safejson` (a deeply nested answer is malformed, not a
``RecursionError``), and an event or line longer than ``max_event`` (an
upstream that never ends its event) is not held back or kept in memory: the
counter stops inspecting the response and passes the rest through, as the
relay's SSE framer does with an overlong line.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeGuard

from .. import safejson

# Keys whose non-empty string value is generated output, most frequent first,
# and the list key of tool calls. Found with bytes.find, which costs a
# fraction of a regular-expression search over the event. Text inside a JSON
# string (a model that writes JSON in its answer) cannot match: its quotes are
# escaped, so quote-key-quote followed by a colon only occurs as a real key.
_CONTENT_KEYS = (
    b'"content"',
    b'"response"',
    b'"text"',
    b'"thinking"',
    b'"reasoning_content"',
    b'"reasoning"',
)
_NON_EMPTY_STRING = re.compile(rb'\s*:\s*"[^"]')
_TOOL_CALLS_KEY = b'"tool_calls"'
_NON_EMPTY_LIST = re.compile(rb"\s*:\s*\[\s*\{")
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_DONE = re.compile(rb'"done"\s*:\s*true')
# A blank line: two line ends in a row, a CR LF being one line end, not two.
_BLANK_LINE = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_DATA_LINE = re.compile(rb"(?:^|[\r\n])data: ?([^\r\n]*)")


class BodyKind(enum.Enum):
    SSE = "sse"  # text/event-stream: OpenAI streams (chat, completions)
    NDJSON = "ndjson"  # application/x-ndjson: Ollama's /api/chat, /api/generate
    JSON = "json"  # one JSON body: non-streamed answers
    OTHER = "other"  # nothing to count (or given up on: see max_event)


def body_kind(content_type: str) -> BodyKind:
    """The kind of a response from its Content-Type header."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "text/event-stream":
        return BodyKind.SSE
    if media == "application/x-ndjson":
        return BodyKind.NDJSON
    if media == "application/json" or media.endswith("+json"):
        return BodyKind.JSON
    return BodyKind.OTHER


@dataclass(frozen=True, slots=True)
class Tokens:
    """What a finished response used.

    ``exact``: both figures are the upstream's own. ``partial``: the response
    ended early, so ``completion_tokens`` is the number of content chunks
    delivered (one token per chunk with Ollama and llama.cpp).
    """

    prompt_tokens: int
    completion_tokens: int
    partial: bool
    exact: bool


class TokenCounter:
    """Counts one response; see the module docstring. Not thread-safe (one per
    request, used from the relay's task)."""

    __slots__ = (
        "_body",
        "_body_limit",
        "_kind",
        "_max_event",
        "_partial",
        "_prompt_estimate",
        "_strip",
        "_unconfirmed",
        "completion_figure",
        "content_chunks",
        "prompt_figure",
        "stripped",
    )

    def __init__(
        self,
        kind: BodyKind,
        *,
        strip_usage_chunk: bool = False,
        prompt_estimate: int = 0,
        max_json_body: int = 8 << 20,
        max_event: int = 1 << 20,
    ) -> None:
        self._kind = kind
        self._strip = strip_usage_chunk and kind is BodyKind.SSE
        self._prompt_estimate = prompt_estimate
        self._body_limit = max_json_body
        self._max_event = max_event
        self._body = bytearray()
        self._partial = b""
        self._unconfirmed = 0
        self.content_chunks = 0
        self.prompt_figure: int | None = None
        self.completion_figure: int | None = None
        self.stripped = 0

    # --- the relay's three calls ------------------------------------------------
    def feed(self, chunk: bytes) -> bytes:
        """Inspect ``chunk``; return the bytes to send to the client now."""
        kind = self._kind
        if kind is BodyKind.SSE:
            return self._feed_sse(chunk)
        if kind is BodyKind.NDJSON:
            self._feed_ndjson(chunk)
        elif kind is BodyKind.JSON:
            if len(self._body) + len(chunk) <= self._body_limit:
                self._body += chunk
            else:
                self._body_limit = -1  # too big to parse; figures stay unknown
        return chunk

    def delivered(self) -> None:
        """The bytes the last ``feed`` returned were written to the client."""
        self.content_chunks += self._unconfirmed
        self._unconfirmed = 0

    def finish(self) -> bytes:
        """The upstream ended: inspect what is left, return bytes still to send
        (then call :meth:`delivered` once they are written, even if empty: an
        event that lacked its final blank line is counted here)."""
        rest, self._partial = self._partial, b""
        if self._kind is BodyKind.SSE:
            if rest.strip() and self._inspect_event(rest) and self._strip:
                self.stripped += 1
                return b""
            return rest if self._strip else b""
        if self._kind is BodyKind.NDJSON:
            if rest.strip():
                self._inspect_line(rest)
        elif self._kind is BodyKind.JSON and self._body_limit >= 0 and self._body:
            self._read_body(bytes(self._body))
            self._body = bytearray()
        return b""

    def tokens(self, *, completed: bool) -> Tokens:
        """The figures to record. ``completed``: the whole answer reached the
        client. Otherwise what was delivered counts, and the record is partial."""
        prompt = self.prompt_figure
        if completed and self.completion_figure is not None:
            return Tokens(prompt or 0, self.completion_figure, partial=False, exact=True)
        return Tokens(
            self._prompt_estimate if prompt is None else prompt,
            self.content_chunks,
            partial=not completed,
            exact=False,
        )

    # --- SSE ---------------------------------------------------------------------
    def _feed_sse(self, chunk: bytes) -> bytes:
        if not self._partial and chunk.find(b"\n\n") == len(chunk) - 2 >= 0 and b"\r" not in chunk:
            # The common case: the upstream wrote exactly one event, with LF
            # line ends (with a CR anywhere, "\n\n" need not be its only end).
            if self._inspect_event(chunk) and self._strip:
                self.stripped += 1
                return b""
            return chunk
        data = self._partial + chunk if self._partial else chunk
        start = 0
        kept: list[bytes] | None = None  # only built when an event is dropped
        for stop, end in _events(data):
            if self._inspect_event(data[start:stop]) and self._strip:
                self.stripped += 1
                if kept is None:
                    kept = [data[:start]]
            elif kept is not None:
                kept.append(data[start:end])
            start = end
        self._partial = data[start:]
        if not self._strip:
            out = chunk
        elif kept is not None:
            out = b"".join(kept)
        else:
            out = data if start == len(data) else data[:start]
        if len(self._partial) > self._max_event:
            out = out + self._partial if self._strip else out
            self._give_up()
        return out

    def _inspect_event(self, event: bytes) -> bool:
        """Count one SSE event; True if it is a usage-only chunk."""
        usage_only = False
        if b'"usage"' in event and _USAGE_OBJECT.search(event) is not None:
            payload = b"\n".join(_DATA_LINE.findall(event))
            try:
                obj = safejson.loads(payload)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                self._take_openai_usage(obj.get("usage"))
                usage_only = obj.get("choices") == []
        if not usage_only and _has_content(event):
            self._unconfirmed += 1
        return usage_only

    # --- NDJSON ------------------------------------------------------------------
    def _feed_ndjson(self, chunk: bytes) -> None:
        data = self._partial + chunk if self._partial else chunk
        start = 0
        while (newline := data.find(b"\n", start)) >= 0:
            self._inspect_line(data[start:newline])
            start = newline + 1
        self._partial = data[start:]
        if len(self._partial) > self._max_event:
            self._give_up()

    def _give_up(self) -> None:
        """An event or line longer than ``max_event``: not one the counter can
        read. Pass everything through from here on and count no more."""
        self._partial = b""
        self._kind = BodyKind.OTHER

    def _inspect_line(self, line: bytes) -> None:
        if _has_content(line):
            self._unconfirmed += 1
        if b'"done"' in line and _DONE.search(line) is not None:
            try:
                obj = safejson.loads(line)
            except ValueError:
                return
            if isinstance(obj, dict):
                self._take_ollama_counts(obj)

    # --- figures -------------------------------------------------------------------
    def _read_body(self, body: bytes) -> None:
        try:
            obj = safejson.loads(body)
        except ValueError:
            return
        self.read_answer(obj)

    def read_answer(self, obj: object) -> None:
        """A whole JSON answer that was parsed already (gateway/pipeline/answers.py
        checks every one): its figures, without parsing it a second time.
        Instead of :meth:`feed`."""
        if not isinstance(obj, dict):
            return
        if "usage" in obj:
            self._take_openai_usage(obj["usage"])
        else:
            self._take_ollama_counts(obj)

    def _take_openai_usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            self._take(usage.get("prompt_tokens"), usage.get("completion_tokens"))

    def _take_ollama_counts(self, obj: dict[str, object]) -> None:
        self._take(obj.get("prompt_eval_count"), obj.get("eval_count"))

    def _take(self, prompt: object, completion: object) -> None:
        if _count(prompt):
            self.prompt_figure = prompt
        if _count(completion):
            self.completion_figure = completion
        elif _count(prompt):  # embeddings: only the prompt is evaluated
            self.completion_figure = 0


def _has_content(data: bytes) -> bool:
    find = data.find
    for key in _CONTENT_KEYS:
        at = find(key)
        while at >= 0:
            if _NON_EMPTY_STRING.match(data, at + len(key)):
                return True
            at = find(key, at + 1)
    at = find(_TOOL_CALLS_KEY)
    while at >= 0:
        if _NON_EMPTY_LIST.match(data, at + len(_TOOL_CALLS_KEY)):
            return True
        at = find(_TOOL_CALLS_KEY, at + 1)
    return False


def _events(data: bytes) -> Iterator[tuple[int, int]]:
    """(end of event, start of the next) for each blank line in ``data``."""
    if b"\r" in data:
        for match in _BLANK_LINE.finditer(data):
            if match.end() == len(data) and data[-1] == 0x0D:
                # A CR that ends the data may be the first half of a CR LF: the
                # next event starts after its LF, so wait for the next chunk.
                return
            yield match.start(), match.end()
        return
    find = data.find
    at = find(b"\n\n")
    while at >= 0:
        yield at, at + 2
        at = find(b"\n\n", at + 2)


def _count(value: object) -> TypeGuard[int]:
    return type(value) is int and value >= 0
