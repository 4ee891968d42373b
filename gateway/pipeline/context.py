"""The context stage: a request id, and one record of every request when it ends.

Outermost, so that it sees every request, including the ones that fail in a
later stage and the ones whose client leaves (aiohttp's own access log
skips those): it accepts or mints the request id, makes every log line made
while handling the request carry it (logs.request_id_var), echoes it on the
response, and at the end writes one access-log line and the per-request
metrics.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler

from ..core.keys import (
    BODY_BYTES,
    FAILURE,
    FORWARDED,
    PRINCIPAL,
    RELAYED_CHUNKS,
    REQUEST_ID,
    REQUEST_ID_HEADER,
    ROUTED,
    ROUTINE,
    SERVER_NAME,
    SHARE,
)
from ..telemetry.logs import redact, request_id_var

if TYPE_CHECKING:
    from ..telemetry.activity import Activity
    from ..telemetry.metrics import Metrics

access_log = logging.getLogger("fognode.access")

# Accept a caller's id only if it is short and harmless in logs and headers.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def request_id_of(request: web.BaseRequest) -> str:
    incoming = request.headers.getall(REQUEST_ID_HEADER, ())
    # Two ids would name the request two ways in the logs, and one shaped like
    # a credential would carry it into every log line, ours and the
    # upstream's: mint one instead.
    if (
        len(incoming) == 1
        and _VALID_REQUEST_ID.match(incoming[0])
        and redact(incoming[0]) == incoming[0]
    ):
        return incoming[0]
    return mint_id()


# Minted ids (requests', usage records'): 16 random hex digits drawn once per
# process, then a counter: 32 hex digits like uuid4's, unique without a system
# call each (uuid4 reads the kernel's random source). A forked child draws a
# prefix of its own.
_id_prefix = os.urandom(8).hex()
_id_counter = itertools.count(1)


def mint_id() -> str:
    return f"{_id_prefix}{next(_id_counter):016x}"


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = os.urandom(8).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_new_id_prefix)


def _bytes_sent(request: web.Request, response: web.StreamResponse | None) -> int:
    """The body's bytes: a whole answer's own (an error the gateway made, or an
    upstream's error read whole and passed on), else what the relay wrote."""
    body = getattr(response, "body", None) if response is not None else None
    if isinstance(body, bytes | bytearray):
        return len(body)
    relayed: int = request.get(BODY_BYTES, 0)
    return relayed


def setup_request_context(
    app: web.Application, metrics: Metrics, activity: Activity | None = None
) -> None:
    """``activity``: where finished requests are counted for the status page."""

    @web.middleware
    async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request_id_of(request)
        request[REQUEST_ID] = rid
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500
        response: web.StreamResponse | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499  # nginx's "client closed request"
            raise
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            duration = time.perf_counter() - started
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            sent = _bytes_sent(request, response)
            metrics.request_done(
                route, request.method, status, duration, request.get(RELAYED_CHUNKS), sent
            )
            quiet = status < 400 and ROUTINE in request
            if access_log.isEnabledFor(logging.INFO) and not quiet:
                _log_access(request, rid, status, sent, duration)
            if activity is not None and not quiet:
                principal = request.get(PRINCIPAL)
                activity.record(
                    method=request.method,
                    route=route,
                    status=status,
                    request_id=rid,
                    uid=principal.uid if principal else None,
                    failure=request.get(FAILURE),
                )
            request_id_var.reset(token)

    async def identify(request: web.Request, response: web.StreamResponse) -> None:
        """Every response, streamed or not, echoes the id and names the server."""
        rid = request.get(REQUEST_ID)
        if rid is not None:
            response.headers[REQUEST_ID_HEADER] = rid
        response.headers["Server"] = SERVER_NAME

    app.middlewares.append(request_context)
    app.on_response_prepare.append(identify)


def _log_access(request: web.Request, rid: str, status: int, sent: int, duration: float) -> None:
    principal = request.get(PRINCIPAL)
    uid = principal.uid if principal else None
    routed = request.get(ROUTED)
    fields = {
        "remote": request.remote,
        "method": request.method,
        "path": request.rel_url.raw_path,
        "status": status,
        "bytes": sent,
        "duration_s": round(duration, 6),
        "uid": uid,
        "request_id": rid,
    }
    route = ""
    share = request.get(SHARE)
    if share is not None:  # an inference request: the class it waited in
        fields["class"] = share.priority
        route = f" class={share.priority}"
    if routed is not None:
        fields |= {"upstream": routed.upstream, "route": routed.reasons}
        route += f" upstream={routed.upstream} route={routed.reasons}"
    forwarded = request.get(FORWARDED)
    if forwarded is not None:  # handed over by the fog's entry node (same request id)
        fields["via"] = forwarded.entry
        route += f" via={forwarded.entry}"
    access_log.info(
        '%s "%s %s" %d %dB %.3fs uid=%s%s',
        request.remote,
        request.method,
        request.rel_url.raw_path,
        status,
        sent,
        duration,
        uid or "-",
        route,
        extra={"fields": fields},
    )
