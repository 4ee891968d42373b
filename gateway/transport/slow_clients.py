"""Deadlines for clients that send slowly (slowloris), and OpenAI-shaped
answers to requests too malformed to reach the app.

aiohttp times out idle keep-alive connections but not a request whose head
arrives a byte at a time, and a body read waits as long as the client
trickles. Both tie up a connection (and, for the body, a validation slot)
indefinitely. fognode bounds them:

* silence: a connection that sends nothing at all is reaped by the
  connection guard (connections.py, `client_first_byte_timeout`), an idle
  keep-alive one after `keepalive_timeout`;
* head: from the first byte of a request to its complete header block,
  `header_timeout` seconds, else the connection is closed;
* body: `body_timeout` seconds for the whole request body, else 408 (in
  pipeline/validation.py, read_body).

The head deadline needs a hook aiohttp does not offer, so the server's
protocol class is a small subclass of aiohttp's RequestHandler; it relies on
two documented-by-use internals (`_messages`, `_current_request`) that the
slow-header test pins down. The same class tells the guard when a request
starts and ends, so the guard knows which connections are idle.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from ..core.errors import error_body
from ..core.keys import SERVER_NAME
from .connections import ConnectionGuard, ConnectionLimits, Gate, GuardedTCPSite, Handler

# Longest request line and header field (name and value) the parser accepts.
# Different on purpose: the limit a LineTooLong names tells which one was hit.
REQUEST_LINE_LIMIT = 8190
HEADER_FIELD_LIMIT = 16384


class _HeadDeadlineHandler(RequestHandler):
    header_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self.gate: Gate | None = None  # set by the connection guard
        self._busy = False  # from a complete request head to its response's end

    def data_received(self, data: bytes) -> None:
        if data and self.gate is not None:
            self.gate.first_byte()
        super().data_received(data)
        if self._messages:  # a complete request head was parsed
            self._busy = True
            self._stop_head_timer()
        elif self._current_request is None and self._head_timer is None and data:
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self.header_timeout, self._head_too_slow)

    def is_idle(self) -> bool:
        """No request in progress or waiting: the guard may close this one.

        ``_busy`` covers a parsed head until its response is written (a
        plain response is written after the handler returns);
        ``_request_in_progress`` (aiohttp's own flag) a pipelined request
        that started after an earlier one finished.
        """
        return (
            not self._busy
            and not self._messages
            and self._current_request is None
            and not getattr(self, "_request_in_progress", False)
        )

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._current_request is None and not self._messages and self.transport is not None:
            self.transport.close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)
        if self.gate is not None:
            self.gate.lost()

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """An HTTP error aiohttp raised outside the app's middlewares (an
        unknown ``Expect``: 417) leaves in OpenAI's shape too."""
        if isinstance(resp, web.HTTPException) and resp.status >= 400 and not resp.prepared:
            # aiohttp's text may quote the request; the reason phrase does not.
            message = _KNOWN.get(resp.status, f"{resp.reason}.")
            resp = _openai_shaped(resp.status, message, code=_slug(resp.reason))
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._busy = False

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """A body that broke off or does not decode is the client's doing:
        one line at INFO, not an ERROR with a traceback."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, web.RequestPayloadError | HttpProcessingError):
            self.logger.info(
                "dropped a request body that could not be read: %s", type(exc).__name__
            )
            return
        super().log_exception(*args, **kwargs)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp could not hand to the app, in OpenAI's shape.

        Malformed HTTP (a bad request line, an oversized or invalid header) is
        answered here, before any middleware runs. aiohttp's own version logs
        the parser's exception at ERROR, and that exception quotes the raw
        request bytes, Authorization header included; this one logs the kind
        of error and the client's address, never the bytes. A 5xx here is a
        fault of the gateway: logged once, with its traceback.
        """
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; cannot send an error instead")
        if status >= 500:
            self.logger.error(
                "internal error handling a request from %s", request.remote, exc_info=exc
            )
            return _openai_shaped(
                status, "Internal gateway error; see the node's log.", code="internal_error"
            )
        status, reason = _malformed(exc, status)
        self.logger.info(
            "refused malformed HTTP from %s: %s (%d)",
            request.remote,
            type(exc).__name__ if exc is not None else "-",
            status,
        )
        return _openai_shaped(status, f"Malformed HTTP request: {reason}.", code=_CODES[status])


_CODES = {400: "malformed_http", 414: "uri_too_long", 431: "headers_too_large"}
_KNOWN = {417: "Unsupported Expect header: only 'Expect: 100-continue' is understood."}


def _openai_shaped(status: int, message: str, *, code: str) -> web.Response:
    """An error answered outside the middlewares: OpenAI's body, our Server
    header, and the connection closed (its state is unknown)."""
    response = web.Response(
        status=status,
        body=json.dumps(error_body(message, status=status, code=code)).encode(),
        content_type="application/json",
        headers={"Server": SERVER_NAME},
    )
    response.force_close()
    return response


def _slug(reason: str) -> str:
    return reason.lower().replace(" ", "_")


def _malformed(exc: BaseException | None, status: int) -> tuple[int, str]:
    """The status and words for a request the HTTP parser refused.

    The parser's message is not used: it quotes the offending bytes.
    """
    if isinstance(exc, LineTooLong):
        # The request line and header fields have different limits
        # (REQUEST_LINE_LIMIT, HEADER_FIELD_LIMIT), so the limit tells which.
        if exc.args[1:2] == (REQUEST_LINE_LIMIT,):
            return 414, "the request line (URL) is longer than the server accepts"
        return 431, "a header is longer than the server accepts"
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return 431, "the request has more headers than the server accepts"
    reason = {
        "BadStatusLine": "the request line is not valid HTTP",
        "BadHttpMethod": "the request method is not valid HTTP",
        "InvalidHeader": "a header is not valid HTTP",
        "InvalidURLError": "the request target is not a valid URL",
        "TransferEncodingError": "the body's transfer encoding is not valid",
        "ContentLengthError": "the Content-Length does not match the body",
        "ContentEncodingError": "the body's Content-Encoding cannot be decoded",
        "DecompressSizeError": "the body is larger than the server accepts once decompressed",
    }.get(type(exc).__name__, "the request is not valid HTTP")
    if isinstance(exc, BadHttpMessage) and exc.message.startswith("Duplicate '"):
        reason = "a header that must appear once appears twice"
    return 400, reason


class _HeadDeadlineServer(web.Server):
    header_timeout = 30.0

    def __call__(self) -> RequestHandler:
        handler = _HeadDeadlineHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout = self.header_timeout
        return handler


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose connections go through a ConnectionGuard (caps,
    silent connections reaped, TLS started there) and enforce the
    request-head deadline. Sites for it are made with :meth:`site`.

    With ``limits`` it makes a guard of its own; with ``guard`` it shares
    another runner's (the phone onboarding page's port counts against the
    same connection caps as the API's), and leaves closing it to that runner.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout: float,
        limits: ConnectionLimits | None = None,
        guard: ConnectionGuard | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        if (limits is None) == (guard is None):
            raise ValueError("give either limits (a guard of its own) or a guard to share")
        self._header_timeout = header_timeout
        self._limits = limits
        self._owns_guard = guard is None
        self.guard: ConnectionGuard | None = guard

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _HeadDeadlineServer
        server.header_timeout = self._header_timeout  # type: ignore[attr-defined]
        if self._owns_guard:
            assert self._limits is not None
            self.guard = ConnectionGuard(self._limits, server)  # type: ignore[arg-type]
        return server

    def site(self, host: str | None, port: int, **kwargs: Any) -> GuardedTCPSite:
        assert self.guard is not None and self.server is not None, "setup() first"
        # The server makes _HeadDeadlineHandlers, which have what the guard needs.
        handlers = cast(Callable[[], Handler], self.server)
        return GuardedTCPSite(self, host, port, guard=self.guard, make_handler=handlers, **kwargs)

    async def cleanup(self) -> None:
        await super().cleanup()
        if self.guard is not None and self._owns_guard:
            self.guard.close_all()
