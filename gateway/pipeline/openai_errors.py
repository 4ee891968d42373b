"""The errors stage: OpenAI-shaped errors for everything the gateway refuses.

Whatever a later stage raises (a GatewayError, the router's 404/405, a bug)
leaves as ``{"error": {"message", "type", "param", "code"}}``. Upstream
errors are the relay's: put in the same shape on the OpenAI routes, and a
missing model worded the one way the SpeziLLMFog app recognises (compat.py).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from ..core.errors import GatewayError, json_error_response
from ..core.keys import FAILURE, REQUEST_ID

log = logging.getLogger("fognode.gateway")


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


def setup_openai_errors(app: web.Application) -> None:
    """Every error leaves as an OpenAI-shaped JSON body, whatever raised it:
    a GatewayError of a later stage, the router's 404/405, or a bug (500,
    logged once with its traceback)."""

    @web.middleware
    async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            if exc.status >= 500:
                log.warning("%s (%s)", exc.message, exc.code)
            request[FAILURE] = exc.message
            return exc.to_response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message, code = _http_exception_message(request, exc)
            request[FAILURE] = message
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            return json_error_response(exc.status, message, code=code, headers=headers)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error")
            request[FAILURE] = "Internal gateway error; see the node's log."
            return json_error_response(
                500,
                f"Internal gateway error (request id {request.get(REQUEST_ID)}); see the node's "
                "log.",
                type="api_error",
                code="internal_error",
            )

    app.middlewares.append(openai_errors)
