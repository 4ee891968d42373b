"""The second stage: OpenAI-shaped errors for everything the gateway refuses.

Clients (the OpenAI SDK, SpeziLLMFog) parse ``{"error": {"message", "type",
"param", "code"}}``; answering every gateway-made error in that one shape means
they can show the message instead of a parse failure. Upstream errors pass
through as the upstream sent them, except a missing model, which is worded
the one way the SpeziLLMFog app recognises (compat.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .context import FAILURE, REQUEST_ID

log = logging.getLogger("fognode.gateway")

JSON_CONTENT_TYPE = "application/json"

# OpenAI's error "type" vocabulary, by status class.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    501: "not_implemented_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def error_type_for(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_body(
    message: str,
    *,
    status: int,
    type: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": type or error_type_for(status),
            "param": param,
            "code": code,
        }
    }


class GatewayError(Exception):
    """An error the gateway answers itself, with an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or error_type_for(status)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(
            self.message, status=self.status, type=self.type, param=self.param, code=self.code
        )

    def to_response(self) -> web.Response:
        return json_error_response(
            self.status,
            self.message,
            type=self.type,
            param=self.param,
            code=self.code,
            headers=self.headers,
        )


def unreadable_body() -> GatewayError:
    """The client's body broke off, or does not decode as its Content-Encoding
    says (whether the gateway read it whole or was streaming it upstream)."""
    return GatewayError(
        400,
        "The request body could not be read: it was cut off, or its Content-Encoding "
        "does not match its bytes.",
        code="invalid_body",
        headers={"Connection": "close"},
    )


def json_error_response(
    status: int,
    message: str,
    *,
    type: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = error_body(message, status=status, type=type, param=param, code=code)
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=JSON_CONTENT_TYPE,
        headers=headers,
    )


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
