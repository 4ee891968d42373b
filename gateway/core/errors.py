"""The gateway's one error: OpenAI's shape, whoever raises it.

Clients (the OpenAI SDK, SpeziLLMFog) parse ``{"error": {"message", "type",
"param", "code"}}``; every stage, the upstream client and the connection
guard raise or write this one shape, so clients can show the message instead
of a parse failure. The stage that turns whatever a request raises into it
is ``pipeline/openai_errors.py``.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

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
