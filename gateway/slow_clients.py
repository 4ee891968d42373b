"""Deadlines for clients that send slowly (slowloris), and OpenAI-shaped
answers to requests too malformed to reach the app.

aiohttp times out idle keep-alive connections but not a request whose head
arrives a byte at a time, and a body read waits as long as the client
trickles. Both tie up a connection (and, for the body, a validation slot)
indefinitely. fognode bounds them:

* head: from the first byte of a request to its complete header block,
  `header_timeout` seconds, else the connection is closed;
* body: `body_timeout` seconds for the whole request body, else 408 (in
  proxy.read_body).

The head deadline needs a hook aiohttp does not offer, so the server's
protocol class is a small subclass of aiohttp's RequestHandler; it relies on
two documented-by-use internals (`_messages`, `_current_request`) that the
slow-header test pins down.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .errors import error_body


class _HeadDeadlineHandler(RequestHandler):
    header_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages:  # a complete request head was parsed
            self._stop_head_timer()
        elif self._current_request is None and self._head_timer is None and data:
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self.header_timeout, self._head_too_slow)

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

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Malformed HTTP (bad request line, oversized header): aiohttp answers
        before any middleware runs, in text/plain; answer in the OpenAI shape
        like every other gateway error."""
        response = super().handle_error(request, status, exc, message)
        if status >= 500:
            return response  # aiohttp's own 500 page, with its logging
        # Never echo the offending bytes: a header may carry a token.
        kind = type(exc).__name__ if exc is not None else ""
        reason = {
            "LineTooLong": "a header or the request line is longer than the server accepts",
            "BadStatusLine": "the request line is not valid HTTP",
            "BadHttpMethod": "the request method is not valid HTTP",
            "InvalidHeader": "a header is not valid HTTP",
            "TransferEncodingError": "the body's transfer encoding is not valid",
            "ContentLengthError": "the Content-Length does not match the body",
        }.get(kind, "the request is not valid HTTP")
        body = error_body(
            f"Malformed HTTP request: {reason}.", status=status, code="malformed_http"
        )
        fixed = web.Response(
            status=status, body=json.dumps(body).encode(), content_type="application/json"
        )
        fixed.force_close()
        return fixed


class _HeadDeadlineServer(web.Server):
    header_timeout = 30.0

    def __call__(self) -> RequestHandler:
        handler = _HeadDeadlineHandler(self, loop=self._loop, **self._kwargs)
        handler.header_timeout = self.header_timeout
        return handler


class GuardedAppRunner(web.AppRunner):
    """An AppRunner whose connections enforce the request-head deadline."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _HeadDeadlineServer
        server.header_timeout = self._header_timeout  # type: ignore[attr-defined]
        return server
