"""The body stage: the request body, read within limits and checked.

Before admission on purpose: a request that is too large, too slow to
arrive, not JSON or not in OpenAI's shape is refused (400, 408, 413) without
ever taking a place in the queue or a slot. The checked body is kept as the
client's exact bytes; the proxy forwards those, not a re-serialisation, so
fields the gateway does not know about (Ollama's ``options``, ``keep_alive``,
``think``...) arrive untouched.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import StreamReader, web
from aiohttp.typedefs import Handler

from ..core.errors import GatewayError, unreadable_body
from .request_models import parse_json_object, validate_body
from .routes import Body, spec_for


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int  # larger: 413
    timeout: float  # longer to arrive (a slowloris body): 408


@dataclass(frozen=True)
class RequestBody:
    """What the proxy sends upstream, and what the later stages need to know of it."""

    data: bytes | StreamReader | None  # a StreamReader for Body.STREAMED routes
    parsed: dict[str, Any] | None  # the JSON object, when the route reads one
    model: str | None  # the model the request names (body, or the path)
    streams_sse: bool  # an OpenAI request with "stream": true: the answer is SSE


REQUEST_BODY = web.RequestKey("fognode.request_body", RequestBody)


async def read_body(request: web.Request, limits: BodyLimits) -> bytes:
    """Read the whole body, refusing early when Content-Length is too big,
    and giving up on a client that trickles it (slowloris) after the timeout."""
    if request.content_length is not None and request.content_length > limits.max_bytes:
        raise too_large(request.content_length, limits.max_bytes)
    try:
        if request.content.is_eof():
            return await request.read()  # all of it came with the head: nothing to wait for
        async with asyncio.timeout(limits.timeout):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(None, limits.max_bytes) from None
    except web.RequestPayloadError:
        raise unreadable_body() from None
    except TimeoutError:
        raise GatewayError(
            408,
            f"The request body did not arrive within {limits.timeout:g}s (FOGNODE_BODY_TIMEOUT).",
            code="body_timeout",
            headers={"Connection": "close"},
        ) from None


def too_large(size: int | None, limit: int) -> GatewayError:
    got = f" ({size} bytes)" if size is not None else ""
    return GatewayError(
        413,
        f"Request body is too large{got}; the limit is {limit} bytes (FOGNODE_MAX_BODY_BYTES).",
        code="request_too_large",
    )


def setup_validation(app: web.Application, limits: BodyLimits) -> None:
    """Read and check the body of every forwarded route, as its spec says."""

    @web.middleware
    async def validation(request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = spec_for(request)
        if spec is not None and spec.forwarded:
            request[REQUEST_BODY] = await _body(request, spec.body, spec.model, limits)
        return await handler(request)

    app.middlewares.append(validation)


async def _body(request: web.Request, kind: Body, model: Any, limits: BodyLimits) -> RequestBody:
    named: str | None = request.match_info.get("model")
    if kind is Body.STREAMED:
        return RequestBody(request.content if request.body_exists else None, None, named, False)
    if not (request.body_exists or request.method in ("POST", "PUT", "PATCH")):
        return RequestBody(None, None, named, False)
    body = await read_body(request, limits)
    if kind is Body.VALIDATED or (kind is Body.JSON and body.strip()):
        parsed = parse_json_object(body)
        if model is not None:
            validate_body(model, parsed)
        wanted = parsed.get("model")
        return RequestBody(
            body,
            parsed,
            wanted if isinstance(wanted, str) else named,
            kind is Body.VALIDATED and parsed.get("stream") is True,
        )
    return RequestBody(body, None, named, False)
