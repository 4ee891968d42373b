"""Relay an upstream response to the client, chunk by chunk, as it arrives.

Each read from the upstream is written to the client at once: no buffering
of the answer, no re-chunking beyond whole SSE lines, so a token Ollama emits
is on the wire to the client within the same event-loop turn. The relay is
in two parts:

* :class:`_Pump` moves bytes and keeps a silent SSE stream alive with comment
  lines between events; it returns how the stream ended;
* :func:`relay_response` sorts that ending out: the upstream finished
  (connection back to the pool), the client went away (upstream connection
  closed at once so Ollama stops generating), the client stopped reading
  (dropped, so back-pressure cannot hold a slot forever), or the upstream
  broke or stalled (an in-band error in the stream's own format: an SSE
  ``error`` event the OpenAI SDK raises on, or an NDJSON ``error`` line the
  Ollama client raises on).

Before the body, an upstream 404 for a missing model is reworded the one way
the SpeziLLMFog app recognises (compat.py), and a response whose headers went
out early (keepalive.py) carries upstream errors in-band.

An inference request comes with a meter (quotas.py): its token counter sees
each upstream chunk before the framer, hands back the bytes to send (the
same bytes, less a usage chunk the gateway asked for on the client's behalf)
and learns after each write that they were delivered.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from aiohttp import web

from ..core.errors import JSON_CONTENT_TYPE, GatewayError, json_error_response
from ..core.keys import BODY_BYTES, FAILURE, RELAYED_CHUNKS
from ..telemetry.stats import GatewayStats
from ..upstreams.upstream import (
    UpstreamBroken,
    UpstreamResponse,
    filter_response_headers,
    relayable_reason,
)
from .compat import (
    RouteEdits,
    error_message,
    is_model_not_found,
    model_not_found_message,
    native_error_body,
    openai_error_body,
)
from .deadline import Deadline
from .keepalive import SSE_HEADERS, KeepAlive
from .quotas import Meter
from .sse import HEARTBEAT, SseFramer, error_event

if TYPE_CHECKING:
    from ...usage.counter import TokenCounter

log = logging.getLogger("fognode.relay")


SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
# Upstream error bodies are read whole (to reword or report them); they are small.
MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True)
class RelayOptions:
    idle_timeout: float  # longest upstream silence mid-body
    write_timeout: float  # longest a client may leave the stream unread
    heartbeat_interval: float  # comment lines on a silent SSE stream


class Ending(enum.Enum):
    COMPLETED = "completed"
    CLIENT_STALLED = "client stopped reading"
    UPSTREAM_IDLE = "upstream idle"
    UPSTREAM_BROKEN = "upstream broke off"


@dataclass
class _Progress:
    sent: int = 0
    chunks: int = 0
    last: int = 0x0A  # the last byte sent (an int: no slice per chunk)


def _media_type(resp: UpstreamResponse) -> str:
    return resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def _error_frame(framer: SseFramer | None, message: str, code: str, last: int) -> bytes:
    """An in-band error in the stream's own framing.

    If the upstream died in the middle of an event (SSE) or line (NDJSON),
    what was sent is terminated first so the error frame is parsed on its own
    rather than glued to garbage. The SSE framer only ever passed whole
    lines; an event still open gets the one blank line that ends it, never a
    second (an empty event ends the SpeziLLMFog app's stream).
    """
    if framer is not None:
        prefix = b"\n" if framer.in_event else b""
        return prefix + error_event(message, status=502, type="upstream_error", code=code)
    prefix = b"" if last == 0x0A else b"\n"
    # Ollama's own NDJSON error line: {"error": "..."}
    return prefix + native_error_body(message) + b"\n"


async def _write(
    response: web.StreamResponse, data: bytes, deadline: Deadline, when: float
) -> bool:
    """Write, giving up on a client that leaves the data unread until ``when``."""
    deadline.at(when)
    try:
        await response.write(data)
    except asyncio.CancelledError:
        if deadline.expired():
            return False
        raise
    finally:
        deadline.clear()
    return True


class _Pump:
    """Moves one body, chunk by chunk: one deadline for the reads and one for
    the writes, for the whole stream (deadline.py); a silent SSE stream gets
    a comment line between events. :meth:`run` says how the stream ended."""

    def __init__(
        self,
        upstream: UpstreamResponse,
        response: web.StreamResponse,
        framer: SseFramer | None,
        options: RelayOptions,
        progress: _Progress,
        counter: TokenCounter | None,
    ) -> None:
        self.upstream = upstream
        self.response = response
        self.framer = framer
        self.options = options
        self.progress = progress
        self.counter = counter
        self.loop = asyncio.get_running_loop()
        self.reading, self.writing = Deadline(), Deadline()
        self.heartbeat_every = options.heartbeat_interval if framer is not None else float("inf")
        self.silent_since = self.loop.time()  # the last chunk's arrival
        self.beat_at = self.silent_since + self.heartbeat_every

    async def run(self) -> Ending:
        upstream, response, reading, writing = (
            self.upstream,
            self.response,
            self.reading,
            self.writing,
        )
        idle, write_timeout = self.options.idle_timeout, self.options.write_timeout
        try:
            while True:
                reading.at(min(self.silent_since + idle, self.beat_at))
                try:
                    chunk = await upstream.readany()
                except asyncio.CancelledError:
                    if not reading.expired():
                        raise
                    ending = await self._silence()
                    if ending is None:
                        continue
                    return ending
                except UpstreamBroken:
                    return Ending.UPSTREAM_BROKEN
                finally:
                    reading.clear()
                self.silent_since = self.loop.time()
                if not chunk:
                    return await self._finish()
                self.beat_at = self.silent_since + self.heartbeat_every
                out = self._framed(chunk)
                if out:
                    if not await _write(response, out, writing, self.silent_since + write_timeout):
                        return Ending.CLIENT_STALLED
                    self._delivered(out)
        finally:
            reading.close()
            writing.close()

    async def _silence(self) -> Ending | None:
        """A read deadline passed: the upstream was silent too long, or a
        heartbeat is due (sent only between events)."""
        now = self.loop.time()
        if now >= self.silent_since + self.options.idle_timeout:
            return Ending.UPSTREAM_IDLE
        assert self.framer is not None
        if self.framer.at_boundary and not await self._write(HEARTBEAT, now):
            return Ending.CLIENT_STALLED
        self.beat_at = now + self.heartbeat_every
        return None

    def _framed(self, chunk: bytes) -> bytes:
        """What of ``chunk`` goes to the client now: through the meter's
        counter (it may take a usage chunk out) and the framer (whole lines)."""
        out = self.counter.feed(chunk) if self.counter is not None else chunk
        if self.framer is not None and out:
            out = self.framer.feed(out)
        return out

    def _delivered(self, out: bytes) -> None:
        if self.counter is not None:
            self.counter.delivered()
        progress = self.progress
        progress.sent += len(out)
        progress.chunks += 1
        progress.last = out[-1]

    async def _finish(self) -> Ending:
        """The upstream's body ended: what the counter and the framer still
        hold goes out."""
        counter, framer = self.counter, self.framer
        rest = counter.finish() if counter is not None else b""
        if framer is not None:
            rest = (framer.feed(rest) if rest else b"") + framer.flush()
        if rest and not await self._write(rest, self.silent_since):
            return Ending.CLIENT_STALLED
        if counter is not None:
            counter.delivered()
        return Ending.COMPLETED

    async def _write(self, data: bytes, now: float) -> bool:
        return await _write(self.response, data, self.writing, now + self.options.write_timeout)


async def relay_response(
    request: web.Request,
    upstream: UpstreamResponse,
    *,
    options: RelayOptions,
    edits: RouteEdits,
    upstream_name: str,
    model: str | None,
    keepalive: KeepAlive | None,
    stats: GatewayStats,
    prefix: bytes = b"",
    whole: bool = False,
    answer: object = None,
    meter: Meter | None = None,
) -> web.StreamResponse:
    """Answer ``request`` with ``upstream``; the caller owns neither afterwards.

    ``prefix`` is the start of the body, already read from ``upstream``
    (answers.py reads a JSON answer to check it before relaying it); ``whole``
    when it is all of it (the upstream's body ended), ``answer`` the JSON it
    parsed to, if it did.
    ``meter``: an inference request's (quotas.py), told what was delivered.
    """
    progress = _Progress()
    completed = False
    stats.active_streams += 1
    try:
        if upstream.status >= 400:
            response = await _relay_error(request, upstream, edits, model, keepalive, meter)
            completed = True
            return response
        media_type = _media_type(upstream)
        length = len(prefix) if whole else None  # read whole, perhaps filled in (answers.py)
        response = await _start_response(request, upstream, media_type, keepalive, length)
        framer = SseFramer(edits.line_edit_for(model)) if media_type == SSE else None
        counter = meter.count(upstream.headers.get("Content-Type", "")) if meter else None
        pump = _Pump(upstream, response, framer, options, progress, counter)
        ending = await _relay_body(pump, prefix, whole, answer)
        if ending is Ending.COMPLETED:
            await response.write_eof()
            completed = True
            if meter is not None:
                meter.completed = True
        elif ending is Ending.CLIENT_STALLED:
            _drop_stalled_client(request, options, progress)
        else:
            stats.upstream_failures_total += 1
            message, code = _failure(ending, upstream_name, options)
            await _fail_in_band(request, response, media_type, framer, message, code, progress.last)
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        # The client left (handler cancelled, or a write hit a closed socket):
        # its access-log line says so (499, and the bytes it got), once.
        stats.client_disconnects_total += 1
        raise
    finally:
        request[BODY_BYTES] = progress.sent
        request[RELAYED_CHUNKS] = progress.chunks
        stats.active_streams -= 1
        if completed:
            upstream.release()
        else:
            # Closing (not releasing) drops the TCP connection, which is how
            # Ollama learns to stop generating.
            upstream.close()


async def _start_response(
    request: web.Request,
    upstream: UpstreamResponse,
    media_type: str,
    keepalive: KeepAlive | None,
    length: int | None,
) -> web.StreamResponse:
    """The response's head, sent; ``length``: a body read whole has its own."""
    if keepalive is not None and keepalive.response is not None:
        return keepalive.response  # 200 text/event-stream went out already
    response = _response_like(upstream, media_type)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    return response


async def _relay_body(pump: _Pump, prefix: bytes, whole: bool, answer: object) -> Ending:
    """The body: what was read already (``prefix``; ``whole`` when that was
    all of it), then the rest, pumped."""
    counter = pump.counter
    if prefix:  # the start of the body, read already (answers.py)
        if counter is not None:
            if answer is not None:
                counter.read_answer(answer)
            else:
                prefix = counter.feed(prefix)  # a JSON answer: the same bytes
        ending = await _write_prefix(pump.response, prefix, pump.options, pump.progress)
        if ending is not None:
            return ending
        if counter is not None:
            counter.delivered()
    if whole:  # read to its end already: nothing more to pump
        if counter is not None:
            rest = counter.finish()
            assert not rest, "a JSON answer leaves no bytes to send"
            counter.delivered()
        return Ending.COMPLETED
    return await pump.run()


def _drop_stalled_client(
    request: web.Request, options: RelayOptions, progress: _Progress
) -> NoReturn:
    """Raises: the client is handled like any other that went away."""
    log.warning(
        "client stopped reading for %gs (FOGNODE_CLIENT_WRITE_TIMEOUT); dropping it after %d bytes",
        options.write_timeout,
        progress.sent,
    )
    if request.transport is not None:
        request.transport.abort()
    raise ConnectionResetError("client stopped reading")


def _failure(ending: Ending, upstream_name: str, options: RelayOptions) -> tuple[str, str]:
    """What the client is told, in-band, of an upstream that failed mid-body."""
    if ending is Ending.UPSTREAM_IDLE:
        return (
            f"The upstream at {upstream_name} sent nothing for "
            f"{options.idle_timeout:g}s (FOGNODE_IDLE_TIMEOUT); the response was cut off.",
            "upstream_idle_timeout",
        )
    return (
        f"The upstream at {upstream_name} broke off the response; the answer is incomplete.",
        "upstream_disconnected",
    )


async def _write_prefix(
    response: web.StreamResponse, prefix: bytes, options: RelayOptions, progress: _Progress
) -> Ending | None:
    writing = Deadline()
    try:
        now = asyncio.get_running_loop().time()
        if not await _write(response, prefix, writing, now + options.write_timeout):
            return Ending.CLIENT_STALLED
    finally:
        writing.close()
    progress.sent, progress.chunks = len(prefix), 1
    if prefix:
        progress.last = prefix[-1]
    return None


class _CoalescedResponse(web.StreamResponse):
    """A response whose head goes out with the first piece of its body, in one
    write (aiohttp's web.Response does this; a StreamResponse sends its head
    on its own at prepare). For answers that are not streams."""

    _send_headers_immediately = False


def _response_like(upstream: UpstreamResponse, media_type: str) -> web.StreamResponse:
    headers = filter_response_headers(upstream.headers)
    streaming = media_type in (SSE, NDJSON)
    if streaming:
        for name, value in SSE_HEADERS.items():
            if name != "Content-Type":
                headers.setdefault(name, value)
    kind = web.StreamResponse if streaming else _CoalescedResponse
    response = kind(
        status=upstream.status, reason=relayable_reason(upstream.reason), headers=headers
    )
    if upstream.content_length is not None and not streaming:
        response.content_length = upstream.content_length
    return response


async def _relay_error(
    request: web.Request,
    upstream: UpstreamResponse,
    edits: RouteEdits,
    model: str | None,
    keepalive: KeepAlive | None,
    meter: Meter | None = None,
) -> web.StreamResponse:
    """An upstream error answer, read whole: reworded if it is a missing model,
    in-band if the stream's headers went out already, else passed on, in
    OpenAI's shape on the OpenAI routes (compat.py)."""
    try:
        body = await upstream.read(MAX_ERROR_BODY)
    except UpstreamBroken:
        body = b""  # what it was is lost; the status still says it failed
    request[FAILURE] = f"The upstream answered {upstream.status}: {_error_text(body)}"
    if upstream.status == 404 and model and edits.reword_missing_model and is_model_not_found(body):
        if meter is not None:
            meter.model_not_found = True
        message = model_not_found_message(model)
        if keepalive is not None and keepalive.started:
            return await keepalive.fail(
                GatewayError(404, message, type="not_found_error", code="model_not_found")
            )
        if edits.openai_errors:
            return json_error_response(404, message, type="not_found_error", code="model_not_found")
        return web.Response(
            status=404, body=native_error_body(message), content_type="application/json"
        )
    if keepalive is not None and keepalive.started:
        return await keepalive.fail(
            GatewayError(
                upstream.status,
                f"The upstream answered {upstream.status}: {_error_text(body)}",
                code="upstream_error",
            )
        )
    headers = filter_response_headers(upstream.headers)
    shaped = (
        openai_error_body(upstream.status, body, _media_type(upstream))
        if edits.openai_errors
        else None
    )
    if shaped is not None:
        # Not OpenAI's ErrorResponse: a strict client could not decode it (compat.py).
        for name in ("Content-Type", "Content-Length", "Content-Encoding"):
            headers.popall(name, None)
        body = json.dumps(shaped).encode()
        headers["Content-Type"] = JSON_CONTENT_TYPE
    return web.Response(
        status=upstream.status, reason=relayable_reason(upstream.reason), body=body, headers=headers
    )


def _error_text(body: bytes) -> str:
    """The message inside an upstream error body, for the log and the status page."""
    return error_message(body, "text/plain") or body.decode(errors="replace")[:500]


async def _fail_in_band(
    request: web.Request,
    response: web.StreamResponse,
    media_type: str,
    framer: SseFramer | None,
    message: str,
    code: str,
    last: int,
) -> None:
    log.warning("%s", message)
    request[FAILURE] = message
    if media_type in (SSE, NDJSON):
        await response.write(_error_frame(framer, message, code, last))
        await response.write_eof()
    else:
        # A plain body cannot carry an error after its headers; cut the
        # connection so the client sees a truncated response, not a hang.
        if request.transport is not None:
            request.transport.close()
