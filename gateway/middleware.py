"""The request pipeline around every handler, outermost first.

1. ``request_context``: accept or mint the request id, log one access line
   per request (including ones the client abandoned, which aiohttp's access
   log skips).
2. ``openai_errors``: every error the gateway makes leaves as an
   OpenAI-shaped JSON body, whatever raised it.
3. ``access_control``: the route's access level is checked by the configured
   authorizer before the handler (and so before anything reaches Ollama).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from ..auth.errors import AuthError, VerifierUnavailable
from .access import ACCESS_BY_ROUTE, AUTHORIZER, PRINCIPAL, Access, Authorizer
from .errors import GatewayError, json_error_response
from .logs import redact, request_id_var
from .metrics import METRICS
from .proxy import REQUEST_ID
from .relay import BODY_BYTES, RELAYED_CHUNKS
from .slow_clients import SERVER_NAME

access_log = logging.getLogger("fognode.access")
log = logging.getLogger("fognode.gateway")

REQUEST_ID_HEADER = "X-Request-ID"
# Accept a caller's id only if it is short and harmless in logs and headers.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


def _request_id(request: web.Request) -> str:
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
    return uuid.uuid4().hex


def _bytes_sent(request: web.Request, response: web.StreamResponse | None) -> int:
    if BODY_BYTES in request:
        return request[BODY_BYTES]
    if response is None:
        return 0
    body = getattr(response, "body", None)
    return len(body) if isinstance(body, bytes | bytearray) else 0


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = _request_id(request)
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
        metrics = request.app[METRICS]
        metrics.requests.labels(route, request.method, str(status)).inc()
        metrics.duration.labels(route).observe(duration)
        if RELAYED_CHUNKS in request:
            metrics.chunks.labels(route).inc(request[RELAYED_CHUNKS])
            metrics.bytes.labels(route).inc(request[BODY_BYTES])
        if access_log.isEnabledFor(logging.INFO):
            principal = request.get(PRINCIPAL)
            sent = _bytes_sent(request, response)
            access_log.info(
                '%s "%s %s" %d %dB %.3fs uid=%s',
                request.remote,
                request.method,
                request.rel_url.raw_path,
                status,
                sent,
                duration,
                principal.uid if principal else "-",
                extra={
                    "fields": {
                        "remote": request.remote,
                        "method": request.method,
                        "path": request.rel_url.raw_path,
                        "status": status,
                        "bytes": sent,
                        "duration_s": round(duration, 6),
                        "uid": principal.uid if principal else None,
                        "request_id": rid,
                    }
                },
            )
        request_id_var.reset(token)


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: every response, streamed or not, echoes the id."""
    rid = request.get(REQUEST_ID)
    if rid is not None:
        response.headers[REQUEST_ID_HEADER] = rid
    response.headers["Server"] = SERVER_NAME


def _http_exception_message(request: web.Request, exc: web.HTTPException) -> tuple[str, str]:
    if exc.status == 404:
        return (
            f"Unknown route: {request.method} {request.path}. fognode serves the OpenAI API "
            "under /v1 and Ollama's API under /api.",
            "unknown_route",
        )
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return (
            f"Method {request.method} is not allowed on {request.path}"
            + (f"; use {allowed}." if allowed else "."),
            "method_not_allowed",
        )
    return exc.reason or "Request failed.", exc.reason.lower().replace(" ", "_")


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        if exc.status >= 500:
            log.warning("%s (%s)", exc.message, exc.code)
        return exc.to_response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message, code = _http_exception_message(request, exc)
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return json_error_response(exc.status, message, code=code, headers=headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error")
        return json_error_response(
            500,
            f"Internal gateway error (request id {request.get(REQUEST_ID)}); see the node's log.",
            type="api_error",
            code="internal_error",
        )


@web.middleware
async def access_control(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = request.match_info.route
    if route.resource is None:
        # No route matched: let the router's 404/405 through.
        return await handler(request)
    access = request.app[ACCESS_BY_ROUTE].get(route.resource.canonical)
    if access is None:
        raise GatewayError(500, "Route has no access level; refusing.", code="misconfigured")
    if access is not Access.PUBLIC:
        authorizer: Authorizer = request.app[AUTHORIZER]  # type: ignore[assignment]
        try:
            principal = await authorizer.authorize(request.headers.get("Authorization"), access)
        except AuthError as exc:
            log.info("refused (%d %s): %s", exc.status, exc.reason, exc.message)
            request.app[METRICS].auth_failures.labels(exc.reason).inc()
            raise GatewayError(
                exc.status,
                exc.message,
                code=exc.reason,
                headers={"WWW-Authenticate": exc.www_authenticate},
            ) from None
        except VerifierUnavailable as exc:
            raise GatewayError(
                503,
                f"Cannot verify tokens right now: {exc}",
                code="auth_unavailable",
                headers={"Retry-After": "5"},
            ) from None
        request[PRINCIPAL] = principal
    return await handler(request)
