"""Keep a streaming client that waits from giving up.

A phone's HTTP idle timeout is 60 s (URLSession's default; the SpeziLLMFog
app's own setting comes too late to take effect), and a streamed request can
wait longer than that before the first byte: in the node's admission queue,
while Ollama loads the model, while a CPU reads a long prompt. A client that
gives up retries, which makes the queue longer.

So a streamed (SSE) request that has waited ``after`` seconds gets its
``200 text/event-stream`` headers early and then a comment line every
``interval`` seconds (``: queued 3`` while it waits for a slot, ``:
keep-alive`` while the upstream works). The cost, documented in docs/client-contract.md:
once those headers are out, a later failure (the queue times out, the
upstream answers 404 or 502) can only be reported in-band, as an SSE error
event, not as a status code. Errors that come fast (400, 401, 404 from a
model check) come before ``after`` and keep their status.

The common case (no queue, a fast upstream) costs one timer. When it fires, a
small task writes the heartbeat; the request's own task calls :meth:`settle`
before it writes anything itself, which waits for a heartbeat in flight, so
the two never interleave on the wire. After the upstream's headers arrive,
the relay keeps the client alive itself, between events (relay.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from ..core.errors import GatewayError
from ..core.keys import FAILURE
from .sse import HEARTBEAT, comment, error_event

log = logging.getLogger("fognode.relay")

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # Tell any proxy in front of us (nginx) not to buffer the stream.
    "X-Accel-Buffering": "no",
}


@dataclass(frozen=True)
class HeartbeatOptions:
    after: float  # seconds of waiting before the headers go out early
    interval: float  # seconds between comment lines


class KeepAlive:
    """One waiting streamed request: its early headers and heartbeats."""

    def __init__(self, request: web.Request, options: HeartbeatOptions) -> None:
        self.request = request
        self.options = options
        # Words the next heartbeat (``queued 3``); None for a plain keep-alive.
        # Awaited: with worker processes the place in the queue is the
        # supervisor's to tell (one round trip per heartbeat, not a push per
        # move of the queue).
        self.status: Callable[[], Awaitable[str | None]] | None = None
        self.response: web.StreamResponse | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(options.after, self._due)
        self._beating: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        """The 200 headers are out: from now on errors go in-band."""
        return self.response is not None

    def _due(self) -> None:
        self._timer = None
        self._beating = self._loop.create_task(self._beat(), name="fognode-heartbeat")

    async def _beat(self) -> None:
        try:
            if self.response is None:
                response = web.StreamResponse(status=200, headers=SSE_HEADERS)
                await response.prepare(self.request)
                self.response = response
            text = await self.status() if self.status is not None else None
            await self.response.write(comment(text) if text else HEARTBEAT)
        except (ConnectionResetError, RuntimeError) as exc:
            # The client left; its handler is being cancelled and closes us.
            log.debug("heartbeat not sent: %s", exc)
            return
        self._timer = self._loop.call_later(self.options.interval, self._due)

    async def settle(self) -> None:
        """Stop the heartbeats; returns once no heartbeat is being written."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._beating is not None:
            beating, self._beating = self._beating, None
            await asyncio.shield(beating)
        if self._timer is not None:  # the heartbeat that just finished re-armed it
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        """The request is over (or its client gone): drop timer and task."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._beating is not None and not self._beating.done():
            self._beating.cancel()
        self._beating = None

    async def fail(self, exc: GatewayError) -> web.StreamResponse:
        """Report an error after the headers went out, and end the stream."""
        self.request[FAILURE] = exc.message
        await self.settle()
        assert self.response is not None
        with contextlib.suppress(ConnectionResetError):
            await self.response.write(
                error_event(exc.message, status=exc.status, type=exc.type, code=exc.code)
            )
            await self.response.write_eof()
        return self.response
