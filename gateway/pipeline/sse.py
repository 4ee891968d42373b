"""Server-sent events as the relay sees them: lines, events, and what may go between.

The SpeziLLMFog app reads streams with swift-openapi-runtime's SSE decoder,
which skips comment lines but dispatches an event on *every* blank line,
even one that ends an event without data; the app stops reading at the first
event without data. So whatever the relay adds or passes between events must
be a comment line ending in a single newline, and blank lines that would end
an empty event (sse-starlette's ``: ping - ...`` keep-alives, which
llama-cpp-python's server sends every 15 s, are such events) are dropped.

:class:`SseFramer` cuts the upstream's byte stream at line ends, so that
edits see whole lines and heartbeats fall between events; a line is passed on
the moment its newline arrives, so nothing waits longer than the line itself.
A line ends, as the SSE specification says, with CR LF, LF or a lone CR
(sse-starlette, and so llama-cpp-python's server, writes CR LF); the framer
writes every line it passes with LF, so that what it adds between events
cannot meet half of an upstream's CR LF.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from ..core.errors import error_body

HEARTBEAT = b": keep-alive\n"
# An upstream line longer than this is not an SSE line a client could use;
# the framer stops holding it back and passes the rest through unedited.
MAX_LINE = 1 << 20

LineEdit = Callable[[bytes], bytes]

_LINE_END = re.compile(rb"\r\n|\r|\n")


def comment(text: str) -> bytes:
    """One comment line, never followed by a blank line (see the module docstring)."""
    return b": " + text.replace("\n", " ").replace("\r", " ").encode() + b"\n"


def error_event(
    message: str, *, status: int, type: str | None = None, code: str | None = None
) -> bytes:
    """An in-band error: the OpenAI SDK raises APIError on it, the app ends its stream."""
    body = error_body(message, status=status, type=type, code=code)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class SseFramer:
    """Passes an SSE byte stream on whole lines, editing ``data:`` lines on the way.

    The edit sees a line without its line end; every line leaves with LF.
    """

    __slots__ = ("_edit", "_in_event", "_passthrough", "_pending", "_skip_lf")

    def __init__(self, edit: LineEdit | None = None) -> None:
        self._edit = edit
        self._pending = b""
        self._in_event = False  # a field line was passed since the last blank line
        self._passthrough = False
        # The last line ended with CR at the end of a chunk: an LF that opens the
        # next one is the rest of that CR LF, not a blank line.
        self._skip_lf = False

    @property
    def in_event(self) -> bool:
        """A field line of an event was passed on, but not the blank line ending it."""
        return self._in_event

    @property
    def at_boundary(self) -> bool:
        """Nothing of an event has been passed on without its end: a comment fits here."""
        return not self._in_event and not self._pending and not self._passthrough

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to send now (possibly none) for this piece of the upstream body."""
        if self._passthrough:
            return chunk
        if (
            not self._pending
            and not self._in_event
            and not self._skip_lf
            and chunk.startswith(b"data:")
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk[-1] == 0x0A
            and b"\r" not in chunk
        ):
            # One whole event (`data: ...\n\n`, the first newline the last but
            # one byte), as Ollama and llama.cpp write them: no splitting.
            return self._edit(chunk[:-2]) + b"\n\n" if self._edit is not None else chunk
        if self._skip_lf:
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        data = self._pending + chunk if self._pending else chunk
        if b"\r" in data:
            return self._lines(data)
        cut = data.rfind(b"\n") + 1
        if not cut:
            return self._hold(data)
        self._pending = data[cut:]
        return b"".join(self._line(line) for line in data[: cut - 1].split(b"\n"))

    def _lines(self, data: bytes) -> bytes:
        """The general case: CR, LF and CR LF mixed."""
        out: list[bytes] = []
        start = 0
        for end in _LINE_END.finditer(data):
            out.append(self._line(data[start : end.start()]))
            start = end.end()
        if not out:
            return self._hold(data)
        self._pending = data[start:]
        # A CR that ends the data may be the first half of a CR LF.
        self._skip_lf = start == len(data) and data[-1] == 0x0D
        return b"".join(out)

    def _hold(self, data: bytes) -> bytes:
        """No line end yet: keep the start of the line, unless it is too long to be one."""
        if len(data) > MAX_LINE:
            self._pending, self._passthrough = b"", True
            return data
        self._pending = data
        return b""

    def _line(self, text: bytes) -> bytes:
        """One line, without its line end: what to pass on (with LF), if anything."""
        if not text:
            if self._in_event:
                self._in_event = False
                return b"\n"
            return b""  # a blank line after no field would dispatch an empty event
        if text[0] != 0x3A:  # not a comment (":")
            self._in_event = True
            if self._edit is not None and text.startswith(b"data:"):
                text = self._edit(text)
        return text + b"\n"

    def flush(self) -> bytes:
        """What is left at the end of the upstream body (an unterminated line)."""
        rest, self._pending = self._pending, b""
        return rest
