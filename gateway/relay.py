"""Relay an upstream response to the client, chunk by chunk, as it arrives.

Each read from the upstream is written to the client at once: no buffering
of the answer, no re-chunking, so a token Ollama emits is on the wire to the
client within the same event-loop turn. The relay is also where the three
ways a stream can end are told apart:

* the upstream finishes: release its connection back to the pool;
* the client goes away: close the upstream connection at once so Ollama
  stops generating (it notices the closed socket and cancels the request);
* the upstream breaks or stalls: tell the client in the stream's own format
  (an SSE ``error`` event the OpenAI SDK raises on, or an NDJSON ``error``
  line the Ollama client raises on) and end the response cleanly.
"""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
from aiohttp import web

from .errors import error_body
from .stats import GatewayStats
from .upstream import filter_response_headers, relayable_reason

log = logging.getLogger("fognode.relay")

# Body bytes relayed to the client, for the access log (aiohttp's own
# counter includes the header block).
BODY_BYTES = web.RequestKey("fognode.body_bytes", int)
RELAYED_CHUNKS = web.RequestKey("fognode.relayed_chunks", int)

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


def _media_type(resp: aiohttp.ClientResponse) -> str:
    return resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def _error_frame(media_type: str, message: str, code: str, tail: bytes) -> bytes:
    """An in-band error in the stream's own framing.

    ``tail`` is the end of what was already sent: if the upstream died in the
    middle of an event, the partial event is terminated first so the error
    frame is parsed on its own rather than glued to garbage.
    """
    if media_type == SSE:
        prefix = b"" if tail.endswith(b"\n\n") or not tail else b"\n\n"
        body = error_body(message, status=502, type="upstream_error", code=code)
        return prefix + b"data: " + json.dumps(body).encode() + b"\n\n"
    prefix = b"" if tail.endswith(b"\n") or not tail else b"\n"
    # Ollama's own NDJSON error line: {"error": "..."}
    return prefix + json.dumps({"error": message}).encode() + b"\n"


async def relay_response(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    *,
    idle_timeout: float,
    upstream_name: str,
    write_timeout: float = 60.0,
    stats: GatewayStats,
    prefix: bytes = b"",
) -> web.StreamResponse:
    """Relay ``upstream`` to the client; ``prefix`` is the start of its body,
    already read from it (by answers.py, which gave up buffering)."""
    media_type = _media_type(upstream)
    streaming = media_type in (SSE, NDJSON)
    headers = filter_response_headers(upstream.headers)
    if streaming:
        # Tell any proxy in front of us (nginx) not to buffer the stream.
        headers["X-Accel-Buffering"] = "no"
        headers.setdefault("Cache-Control", "no-cache")
    response = web.StreamResponse(
        status=upstream.status, reason=relayable_reason(upstream.reason), headers=headers
    )
    if upstream.content_length is not None and not streaming:
        response.content_length = upstream.content_length

    loop = asyncio.get_running_loop()
    content = upstream.content
    tail = b""
    sent = 0
    chunks = 0
    completed = False
    stats.active_streams += 1
    try:
        await response.prepare(request)
        writing = False
        try:
            # One timer, re-armed for each phase: waiting on the upstream
            # (idle gap) and waiting on the client (a reader that stopped
            # reading holds a slot; back-pressure must not become a hang).
            async with asyncio.timeout(None) as deadline:
                if prefix:
                    writing = True
                    deadline.reschedule(loop.time() + write_timeout)
                    await response.write(prefix)
                    writing = False
                    sent, tail = len(prefix), prefix[-2:]
                while True:
                    deadline.reschedule(loop.time() + idle_timeout)
                    chunk = await content.readany()
                    if not chunk:
                        break
                    writing = True
                    deadline.reschedule(loop.time() + write_timeout)
                    await response.write(chunk)
                    writing = False
                    sent += len(chunk)
                    chunks += 1
                    tail = chunk[-2:]
                deadline.reschedule(None)
        except TimeoutError:
            if writing:
                log.warning(
                    "client stopped reading for %gs (FOGNODE_CLIENT_WRITE_TIMEOUT); "
                    "dropping it after %d bytes",
                    write_timeout,
                    sent,
                )
                if request.transport is not None:
                    request.transport.abort()
                # Handled below like any other client that went away.
                raise ConnectionResetError("client stopped reading") from None
            stats.upstream_failures_total += 1
            message = (
                f"The upstream at {upstream_name} sent nothing for {idle_timeout:g}s "
                "(FOGNODE_IDLE_TIMEOUT); the response was cut off."
            )
            await _fail_in_band(
                request, response, media_type, message, "upstream_idle_timeout", tail
            )
            return response
        except (
            aiohttp.ClientPayloadError,
            aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError,
        ) as exc:
            stats.upstream_failures_total += 1
            message = (
                f"The upstream at {upstream_name} broke off the response "
                f"({type(exc).__name__}); the answer is incomplete."
            )
            await _fail_in_band(
                request, response, media_type, message, "upstream_disconnected", tail
            )
            return response
        await response.write_eof()
        completed = True
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        # The client left (handler cancelled, or a write hit a closed socket).
        stats.client_disconnects_total += 1
        log.info("client disconnected after %d bytes; upstream request cancelled", sent)
        raise
    finally:
        request[BODY_BYTES] = sent
        request[RELAYED_CHUNKS] = chunks
        stats.active_streams -= 1
        if completed:
            upstream.release()
        else:
            # Closing (not releasing) drops the TCP connection, which is how
            # Ollama learns to stop generating.
            upstream.close()


async def _fail_in_band(
    request: web.Request,
    response: web.StreamResponse,
    media_type: str,
    message: str,
    code: str,
    tail: bytes,
) -> None:
    log.warning("%s", message)
    if media_type in (SSE, NDJSON):
        await response.write(_error_frame(media_type, message, code, tail))
        await response.write_eof()
    else:
        # A plain body cannot carry an error after its headers; cut the
        # connection so the client sees a truncated response, not a hang.
        if request.transport is not None:
            request.transport.close()
