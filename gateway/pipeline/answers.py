"""Non-streamed JSON answers are checked before they are passed on as success.

A stream is relayed chunk by chunk (relay.py): its status went out with the
first byte, and a broken stream ends with an in-band error. A plain JSON
answer is different: the client parses it whole (and a strict one needs
every field OpenAI's document requires: the route's ``answer_edit`` fills in
what the upstream left out, compat.py), and an upstream 200
``application/json`` whose body is not JSON (a crashed worker's text, an
HTML page from something in between, a body cut short) makes the OpenAI SDK
raise a decoding error instead of an API error. Such answers are read
whole first (they are small: a completion, a model list, embeddings) and a
success that does not parse becomes a 502 in OpenAI's shape. So does a
body that breaks off (a Content-Length the upstream does not keep, broken
chunked encoding) or stalls, which the client would otherwise see as a
truncated response after a 200.

An answer longer than :data:`CHECK_LIMIT` is not held back: what was read
is sent and the rest relayed as it comes (unchecked, as before). Either way
the relay writes it, so a client that does not read is dropped after
``client_write_timeout`` as for streams.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import zlib

from aiohttp import web

from ... import safejson
from ..core.errors import GatewayError
from ..telemetry.stats import GatewayStats
from ..upstreams.upstream import UpstreamBroken, UpstreamResponse
from .compat import RouteEdits, dump_answer
from .deadline import Deadline
from .keepalive import KeepAlive
from .quotas import Meter
from .relay import RelayOptions, relay_response

log = logging.getLogger("fognode.relay")

CHECK_LIMIT = 16 * 1024 * 1024
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "identity": 0, "": 0}


def _json_media_type(upstream: UpstreamResponse) -> bool:
    media = upstream.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _checkable(request: web.Request, upstream: UpstreamResponse) -> bool:
    encoding = upstream.headers.get("Content-Encoding", "").strip().lower()
    return (
        200 <= upstream.status < 300
        and upstream.status not in (204, 205)
        and request.method != "HEAD"
        and _json_media_type(upstream)
        and encoding in _ZLIB_WBITS
    )


def _decoded(body: bytes, encoding: str) -> bytes | None:
    """The answer's plain bytes, or None if they exceed the check limit
    (bounded: a small compressed answer must not inflate without limit)."""
    wbits = _ZLIB_WBITS[encoding]
    if not wbits:
        return body
    inflater = zlib.decompressobj(wbits)
    plain = inflater.decompress(body, CHECK_LIMIT)
    return None if inflater.unconsumed_tail else plain


async def relay_answer(
    request: web.Request,
    upstream: UpstreamResponse,
    *,
    options: RelayOptions,
    edits: RouteEdits,
    upstream_name: str,
    model: str | None,
    keepalive: KeepAlive | None,
    stats: GatewayStats,
    meter: Meter | None = None,
) -> web.StreamResponse:
    """Relay the upstream's answer (relay.relay_response, same arguments); a
    non-streamed JSON success is checked first."""
    relay = functools.partial(
        relay_response,
        request,
        upstream,
        options=options,
        edits=edits,
        upstream_name=upstream_name,
        model=model,
        keepalive=keepalive,
        stats=stats,
        meter=meter,
    )
    if not _checkable(request, upstream) or (keepalive is not None and keepalive.started):
        return await relay()  # a stream's headers went out already: errors go in-band
    idle_timeout = options.idle_timeout
    loop = asyncio.get_running_loop()
    parts: list[bytes] = []
    size = 0
    complete = False
    reading = Deadline()
    try:
        while size <= CHECK_LIMIT:
            reading.at(loop.time() + idle_timeout)
            chunk = await upstream.readany()
            if not chunk:
                complete = True
                break
            parts.append(chunk)
            size += len(chunk)
    except asyncio.CancelledError:
        upstream.close()
        if not reading.expired():
            raise  # the client left: the upstream connection is dropped too
        stats.upstream_failures_total += 1
        raise GatewayError(
            504,
            f"The upstream at {upstream_name} stopped sending its answer for "
            f"{idle_timeout:g}s (FOGNODE_IDLE_TIMEOUT).",
            code="upstream_idle_timeout",
        ) from None
    except UpstreamBroken as exc:
        upstream.close()
        stats.upstream_failures_total += 1
        raise GatewayError(
            502,
            f"The upstream at {upstream_name} broke off its answer ({type(exc).__name__}).",
            code="upstream_disconnected",
        ) from None
    except BaseException:
        upstream.close()
        raise
    finally:
        reading.close()
    body = parts[0] if len(parts) == 1 else b"".join(parts)  # mostly one piece: no copy
    encoding = upstream.headers.get("Content-Encoding", "").strip().lower()
    answer: object = None
    try:
        plain = _decoded(body, encoding) if complete else None
        if plain is not None:  # else too large to check, like a long answer
            answer = safejson.loads(plain)
    except (ValueError, zlib.error):
        upstream.release()  # read to its end: the connection can be reused
        stats.upstream_failures_total += 1
        log.warning(
            "the upstream at %s answered %d %s that is not JSON (%d bytes)",
            upstream_name,
            upstream.status,
            upstream.headers.get("Content-Type", ""),
            len(body),
        )
        raise GatewayError(
            502,
            f"The upstream at {upstream_name} answered {upstream.status} with a body that is "
            "not the JSON it announced.",
            code="upstream_invalid_json",
        ) from None
    if (
        edits.answer_edit is not None
        and isinstance(answer, dict)
        and not _ZLIB_WBITS[encoding]  # fognode asks inference upstreams for identity
        and edits.answer_edit(answer)
    ):
        body = dump_answer(answer)  # what a strict client requires, filled in (compat.py)
    # Written by the relay like every answer: the client-write deadline holds,
    # and what was not read yet (past the limit) follows. The meter takes its
    # figures from the parsed answer (not parsing it again).
    return await relay(prefix=body, whole=complete, answer=answer)
