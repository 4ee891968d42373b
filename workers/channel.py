"""One connection between the supervisor and a worker: framed, multiplexed, leased.

Every frame is a JSON array on one line (JSON never puts a raw newline
inside a value): ``[op, id, args...]``. Either side may call the other:

    [op, id, args...]   a call (id > 0) that wants a reply; id 0: a notice, no reply
    ["=", id, values...] the reply to call ``id``
    ["!", id, message]  the call failed (the handler raised)
    ["-", id]           the caller gave up (its task was cancelled)
    ["~", id]           the caller is done with what call ``id`` leased to it

Many calls are in flight at once on one connection; the ids tell the
replies apart. What makes it more than request/reply is ownership: a
handler may answer with a *lease* (a reply with a release function), such
as an admission slot. The callee keeps the release until the caller says
``~`` (done), or ``-`` arrives after the reply was sent (the caller gave up
just as the answer came: nobody will use it), or the connection drops (the
worker crashed). So whatever one side holds for the other is given back
exactly once, whichever of these comes first.

Frames written in one turn of the event loop leave in one write: under
load a worker's acquires and releases share system calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias, cast

log = logging.getLogger("fognode.workers")

# What a frame carries: JSON values (workers/messages.py types them).
Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"

# The longest frame either side accepts (a worker's metrics are the largest).
MAX_FRAME = 16 << 20

REPLY, FAILED, GAVE_UP, DONE = "=", "!", "-", "~"


class ChannelClosed(ConnectionError):
    """The other side is gone (or this side closed): no reply will come."""


class CallFailed(Exception):
    """The other side's handler raised; the message is its text."""


class Refused(Exception):
    """Raised by a handler that will not take a call (an op it does not know,
    arguments that do not fit): the caller gets CallFailed with the message,
    and the log a warning rather than a handler's traceback."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What a handler answers: values, and optionally a lease to give back later."""

    values: list[Json]
    release: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply as the caller sees it; ``id`` names a lease in :meth:`Channel.done`."""

    id: int
    values: list[Json]


Handler = Callable[[str, list[Json]], Awaitable[Reply]]
NoticeHandler = Callable[[str, list[Json]], None]
# Answers a call in the step that reads it, when it can (None: it cannot, and
# the call goes to the Handler in a task of its own).
ImmediateHandler = Callable[[str, list[Json]], Reply | None]


class Channel(asyncio.Protocol):
    """One end of the connection (the same class on both ends)."""

    def __init__(
        self,
        *,
        serve: Handler | None = None,
        notice: NoticeHandler | None = None,
        serve_now: ImmediateHandler | None = None,
        max_frame: int = MAX_FRAME,
    ) -> None:
        """``serve_now``: tried first for every call; a call it answers costs
        no task (a free admission slot, on every request of every worker)."""
        self._serve = serve
        self._serve_now = serve_now
        self._notice = notice
        self._max_frame = max_frame
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._next_id = 0
        self._calls: dict[int, asyncio.Future[list[Json]]] = {}
        self._running: dict[int, asyncio.Task[None]] = {}
        self._leases: dict[int, Callable[[], None]] = {}
        self._closed = False
        self.lost = asyncio.Event()  # set when the connection is gone
        self.on_lost: list[Callable[[], None]] = []
        self._control: dict[str, Callable[[int, list[Json]], None]] = {
            REPLY: self._replied,
            FAILED: self._refused,
            GAVE_UP: self._gave_up,
            DONE: self._done,
        }

    # --- what callers use -------------------------------------------------------
    @property
    def open(self) -> bool:
        return self._transport is not None and not self._closed

    @property
    def leases(self) -> int:
        """Leases this side holds for the other (slots it granted, for instance)."""
        return len(self._leases)

    async def call(self, op: str, *args: Json) -> Answer:
        """Call the other side and wait for its reply.

        Cancelled, it tells the other side, which stops the handler or gives
        back what the handler leased. Raises ChannelClosed when the
        connection is (or goes) away, CallFailed when the handler raised.
        """
        if not self.open:
            raise ChannelClosed("the channel is closed")
        self._next_id += 1
        ident = self._next_id
        future: asyncio.Future[list[Json]] = asyncio.get_running_loop().create_future()
        self._calls[ident] = future
        self._send([op, ident, *args])
        try:
            values = await future
        except asyncio.CancelledError:
            self._calls.pop(ident, None)
            if self.open:
                # Even when the reply has arrived (and this task was cancelled
                # before it could take it): the other side then releases it.
                self._send([GAVE_UP, ident])
            raise
        return Answer(ident, values)

    def done(self, ident: int) -> None:
        """Give back what call ``ident`` leased (no reply; a gone peer released it already)."""
        if self.open:
            self._send([DONE, ident])

    def notify(self, op: str, *args: Json) -> None:
        """A one-way message (dropped if the connection is gone)."""
        if self.open:
            self._send([op, 0, *args])

    def close(self) -> None:
        """Send what is queued, then close."""
        if self._transport is not None and not self._closed:
            self._flush()
            self._closed = True
            self._transport.close()

    # --- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's transport (uvloop's is no asyncio.Transport subclass).
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buffer[start:end])
            start = end + 1
            if not self._frame(line):
                return
        if start:
            del buffer[:start]
        if len(buffer) > self._max_frame:
            self._abort(f"a frame longer than {self._max_frame} bytes")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        self._transport = None
        self._out.clear()
        calls, self._calls = self._calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(ChannelClosed("the other side is gone"))
        running, self._running = self._running, {}
        for task in running.values():
            task.cancel()
        leases, self._leases = self._leases, {}
        for release in leases.values():
            release()  # the other side is gone: it holds nothing any more
        self.lost.set()
        for callback in self.on_lost:
            callback()

    # --- frames -------------------------------------------------------------------
    def _frame(self, line: bytes) -> bool:
        """Handle one frame; False when it was malformed (the connection is closed)."""
        try:
            frame = json.loads(line)
        except ValueError:
            self._abort("a frame that is not JSON")
            return False
        if (
            not isinstance(frame, list)
            or len(frame) < 2
            or not isinstance(frame[0], str)
            or type(frame[1]) is not int
        ):
            self._abort("a frame that is not [op, id, ...]")
            return False
        op, ident, values = frame[0], frame[1], frame[2:]
        control = self._control.get(op)
        if control is not None:
            control(ident, values)
        elif ident == 0:
            self._noticed(op, values)
        elif self._serve is None or ident < 0 or ident in self._running or ident in self._leases:
            self._abort(f"an unexpected call {op!r}")
            return False
        else:
            self._called(op, ident, values)
        return True

    # The frames about a call, by their op.
    def _replied(self, ident: int, values: list[Json]) -> None:
        future = self._calls.pop(ident, None)
        if future is not None and not future.done():
            future.set_result(values)

    def _refused(self, ident: int, values: list[Json]) -> None:
        future = self._calls.pop(ident, None)
        if future is not None and not future.done():
            future.set_exception(CallFailed(str(values[0]) if values else ""))

    def _gave_up(self, ident: int, values: list[Json]) -> None:
        task = self._running.pop(ident, None)
        if task is not None:
            task.cancel()
        else:
            self._release(ident)

    def _done(self, ident: int, values: list[Json]) -> None:
        self._release(ident)

    def _noticed(self, op: str, values: list[Json]) -> None:
        if self._notice is not None:
            try:
                self._notice(op, values)
            except Exception:
                log.exception("the handler of the notice %r failed", op)

    def _called(self, op: str, ident: int, args: list[Json]) -> None:
        assert self._serve is not None
        if self._serve_now is not None:
            try:
                reply = self._serve_now(op, args)
            except Exception as exc:
                self._failed(ident, op, exc)
                return
            if reply is not None:
                self._reply(ident, reply)
                return
        self._running[ident] = asyncio.get_running_loop().create_task(
            self._answer(ident, self._serve, op, args)
        )

    async def _answer(self, ident: int, serve: Handler, op: str, args: list[Json]) -> None:
        try:
            reply = await serve(op, args)
        except asyncio.CancelledError:
            return  # the caller gave up (or is gone): nobody waits for an answer
        except Exception as exc:
            if self._running.pop(ident, None) is not None:
                self._failed(ident, op, exc)
            return
        if self._running.pop(ident, None) is None or not self.open:
            # Given up after the handler finished but before this step ran.
            if reply.release is not None:
                reply.release()
            return
        self._reply(ident, reply)

    def _reply(self, ident: int, reply: Reply) -> None:
        if reply.release is not None:
            self._leases[ident] = reply.release
        self._send([REPLY, ident, *reply.values])

    def _failed(self, ident: int, op: str, exc: Exception) -> None:
        if isinstance(exc, Refused):
            log.warning("refused a call %r: %s", op, exc)
        else:
            log.error("the handler of %r failed", op, exc_info=exc)
        if self.open:
            self._send([FAILED, ident, f"{type(exc).__name__}: {exc}"])

    def _release(self, ident: int) -> None:
        release = self._leases.pop(ident, None)
        if release is not None:
            release()

    def _send(self, frame: list[Json]) -> None:
        data = json.dumps(frame, separators=(",", ":")).encode()
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(data)
        self._out.append(b"\n")

    def _flush(self) -> None:
        if self._out and self._transport is not None:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def _abort(self, what: str) -> None:
        log.error("closing the channel: the other side sent %s", what)
        if self._transport is not None:
            self._transport.abort()
        self._closed = True
