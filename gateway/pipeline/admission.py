"""The admission stage: how many inference requests reach the upstream at once.

Ollama queues by itself, but without a bound the gateway cannot see (and
only up to OLLAMA_MAX_QUEUE, after which it answers 503 "server busy").
fognode owns the queue instead:

* a global cap on concurrent upstream requests, with a bounded FIFO wait
  queue; beyond it the node is full: 503 with Retry-After;
* a per-user cap (by uid) with its own small queue, so one client cannot
  take every slot; beyond it: 429 with Retry-After;
* a wait limit, after which a queued request gives up with 503;
* a queued request whose client leaves is dropped from the queue at once
  (handler cancellation cancels its wait).

Retry-After is estimated from the recent average request duration and the
queue ahead, so clients back off for about as long as it takes to drain.

A streamed (SSE) request that waits long gets its headers early and
heartbeats with its place in the queue (keepalive.py); an error after that
(a queue timeout, an upstream failure) goes in-band.

The stage asks whatever :class:`AdmissionControl` it is given: the node's
:class:`Admission` itself in a single process, or, in a worker process, a
client of the one Admission the supervisor holds for every worker
(worker.py), so a cap is never counted per process.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ...fog.hop import Forwarded
from ..core.errors import GatewayError
from ..core.keys import FORWARDED, PRINCIPAL
from .keepalive import HeartbeatOptions, KeepAlive
from .placement import HANDOVER, Handover, MembersDeclined, Placement
from .routes import spec_for
from .validation import REQUEST_BODY

log = logging.getLogger("fognode.gateway")


@dataclass
class _Gate:
    """A counting gate with a bounded FIFO queue of waiters."""

    capacity: int
    max_waiting: int
    active: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    def full(self) -> bool:
        return self.active >= self.capacity

    def queue_full(self) -> bool:
        return len(self.waiters) >= self.max_waiting

    async def enter(self, wait_limit: float, ticket: Ticket | None = None) -> None:
        if not self.full() and not self.waiters:
            self.active += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        if ticket is not None:
            ticket.gate, ticket.future = self, future
        try:
            async with asyncio.timeout(wait_limit):
                await future
        except BaseException:
            if future.done() and not future.cancelled():
                # The slot was handed to us just as we gave up: pass it on.
                self.leave()
            else:
                future.cancel()
                with suppress(ValueError):
                    self.waiters.remove(future)
            raise
        finally:
            if ticket is not None:
                ticket.gate = ticket.future = None
        # leave() transferred its slot to us; active already counts it.

    def leave(self) -> None:
        while self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_result(None)  # hand the slot over without releasing it
                return
        self.active -= 1

    def place(self, future: asyncio.Future[None]) -> int | None:
        try:
            return self.waiters.index(future) + 1
        except ValueError:
            return None


class Ticket:
    """Where one request waits, so its heartbeats can tell the client (``queued 3``)."""

    __slots__ = ("future", "gate")

    def __init__(self) -> None:
        self.gate: _Gate | None = None
        self.future: asyncio.Future[None] | None = None


class Slots(enum.Enum):
    """Which slots a request takes here."""

    BOTH = "both"  # the user's and the node's: a request served here
    # The user's only: a request this node hands to a member of the fog (the
    # user is counted once, at the node the request entered).
    USER = "user"
    # The node's only: a request a member handed to this node (its entry
    # counted the user), or one whose members all declined it, which holds
    # its user's slot already.
    NODE = "node"


@dataclass
class Permit:
    """An admitted request's slots; give it back with Admission.release."""

    uid: str
    user: _Gate | None  # None: no slot of the user's
    started: float
    node: bool = True  # it holds one of the node's slots


@dataclass(frozen=True, slots=True)
class Load:
    """The node's slots in use and requests waiting, as the status page shows them."""

    active: int
    queued: int


class Admission:
    def __init__(
        self,
        *,
        max_concurrent: int,
        max_queue: int,
        per_user_concurrent: int,
        per_user_queue: int,
        queue_timeout: float,
    ) -> None:
        self.global_gate = _Gate(max_concurrent, max_queue)
        self.per_user_concurrent = per_user_concurrent
        self.per_user_queue = per_user_queue
        self.queue_timeout = queue_timeout
        self._users: dict[str, _Gate] = {}
        self._avg_seconds = 1.0  # EWMA of admitted request durations
        self.rejected_user = 0
        self.rejected_full = 0
        self.timed_out = 0

    @property
    def capacity(self) -> int:
        return self.global_gate.capacity

    @property
    def active(self) -> int:
        return self.global_gate.active

    @property
    def queued(self) -> int:
        return len(self.global_gate.waiters) + sum(len(g.waiters) for g in self._users.values())

    async def load(self) -> Load:
        return Load(self.active, self.queued)

    async def position(self, ticket: Ticket) -> int | None:
        """1 for the next request to get a slot; None once admitted (or not waiting).

        A request still in its user's queue also waits behind everyone in the
        node's queue.
        """
        gate, future = ticket.gate, ticket.future
        if gate is None or future is None:
            return None
        place = gate.place(future)
        if place is None or gate is self.global_gate:
            return place
        return place + len(self.global_gate.waiters)

    def _retry_after(self, ahead: int, capacity: int) -> str:
        return str(max(1, math.ceil(self._avg_seconds * (ahead + 1) / max(1, capacity))))

    def expected_wait(self) -> float:
        """Seconds a new request would wait for one of the node's slots (0:
        one is free): the queue ahead, served at the recent pace."""
        gate = self.global_gate
        if not gate.full() and not gate.waiters:
            return 0.0
        return self._avg_seconds * (len(gate.waiters) + 1) / max(1, gate.capacity)

    def try_acquire(self, uid: str, slots: Slots = Slots.BOTH) -> Permit | None:
        """Slots for ``uid`` now, when they are free and nobody waits for
        them; None otherwise (then :meth:`acquire` queues or refuses). No
        await: most requests find a slot free, and take it in one step."""
        user: _Gate | None = None
        if slots is not Slots.NODE:
            user = self._users.get(uid)
            if user is not None and (user.full() or user.waiters):
                return None
        gate = self.global_gate
        if slots is not Slots.USER and (gate.full() or gate.waiters):
            return None
        if slots is not Slots.NODE:
            if user is None:
                user = self._users[uid] = _Gate(self.per_user_concurrent, self.per_user_queue)
            user.active += 1
        if slots is not Slots.USER:
            gate.active += 1
        return Permit(uid, user, asyncio.get_running_loop().time(), node=slots is not Slots.USER)

    async def acquire(
        self, uid: str, ticket: Ticket | None = None, slots: Slots = Slots.BOTH
    ) -> Permit:
        """Wait for a slot for ``uid``: its own first, then the node's."""
        permit = self.try_acquire(uid, slots)
        if permit is not None:
            return permit
        if slots is Slots.NODE:
            await self._enter_node(ticket)
            return Permit(uid, None, asyncio.get_running_loop().time())
        user = self._users.get(uid)
        if user is None:
            user = self._users[uid] = _Gate(self.per_user_concurrent, self.per_user_queue)
        try:
            if user.full() and user.queue_full():
                self.rejected_user += 1
                raise GatewayError(
                    429,
                    f"Too many requests from this user at once (limit "
                    f"{self.per_user_concurrent} running, {self.per_user_queue} waiting); "
                    "retry later.",
                    code="user_concurrency_limit",
                    headers={
                        "Retry-After": self._retry_after(
                            len(user.waiters), self.per_user_concurrent
                        )
                    },
                )
            await self._enter(user, ticket)
            if slots is Slots.BOTH:
                try:
                    await self._enter_node(ticket)
                except BaseException:
                    user.leave()
                    raise
        except BaseException:
            self._forget_idle(uid, user)
            raise
        return Permit(uid, user, asyncio.get_running_loop().time(), node=slots is Slots.BOTH)

    async def _enter_node(self, ticket: Ticket | None) -> None:
        gate = self.global_gate
        if gate.full() and gate.queue_full():
            self.rejected_full += 1
            raise GatewayError(
                503,
                f"The node is busy: {gate.capacity} requests running and "
                f"{len(gate.waiters)} waiting; retry later.",
                code="node_busy",
                headers={"Retry-After": self._retry_after(len(gate.waiters), gate.capacity)},
            )
        await self._enter(gate, ticket)

    def release(self, permit: Permit) -> None:
        if permit.node:
            self.global_gate.leave()
            elapsed = asyncio.get_running_loop().time() - permit.started
            self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * elapsed
        if permit.user is not None:
            permit.user.leave()
            self._forget_idle(permit.uid, permit.user)

    async def try_now(self, uid: str, slots: Slots = Slots.BOTH) -> Permit | float:
        """Slots now, or the seconds a request would wait for them (placement
        asks before it decides where a request runs)."""
        permit = self.try_acquire(uid, slots)
        return permit if permit is not None else self.expected_wait()

    @asynccontextmanager
    async def admit(self, uid: str, ticket: Ticket | None = None) -> AsyncIterator[None]:
        permit = await self.acquire(uid, ticket)
        try:
            yield
        finally:
            self.release(permit)

    def _forget_idle(self, uid: str, user: _Gate) -> None:
        if user.active == 0 and not user.waiters and self._users.get(uid) is user:
            del self._users[uid]

    async def _enter(self, gate: _Gate, ticket: Ticket | None) -> None:
        try:
            await gate.enter(self.queue_timeout, ticket)
        except TimeoutError:
            self.timed_out += 1
            raise GatewayError(
                503,
                f"Waited {self.queue_timeout:g}s for a free slot on this node; retry later.",
                code="queue_timeout",
                headers={"Retry-After": self._retry_after(len(gate.waiters), gate.capacity)},
            ) from None


PermitT = TypeVar("PermitT")


class AdmissionControl(Protocol[PermitT]):
    """What the stage needs of admission: Admission here, or a worker's client of it."""

    @property
    def capacity(self) -> int: ...

    async def acquire(
        self, uid: str, ticket: Ticket | None = None, slots: Slots = Slots.BOTH
    ) -> PermitT: ...

    async def try_now(self, uid: str, slots: Slots = Slots.BOTH) -> PermitT | float: ...

    def release(self, permit: PermitT) -> None: ...

    async def position(self, ticket: Ticket) -> int | None: ...

    async def load(self) -> Load: ...


ADMISSION: web.AppKey[AdmissionControl[Any]] = web.AppKey("fognode.admission")
# A waiting streamed request's early headers and heartbeats; the proxy stage
# settles it before it writes the upstream's answer.
KEEPALIVE = web.RequestKey("fognode.keepalive", KeepAlive)


def setup_admission(
    app: web.Application,
    admission: AdmissionControl[Any],
    heartbeats: HeartbeatOptions,
    placement: Placement | None = None,
) -> None:
    """``placement``: where this node is a member of the fog, whether a
    request runs here or at a member (placement.py)."""
    app[ADMISSION] = admission

    async def serve_forwarded(
        request: web.Request, handler: Handler, uid: str, forwarded: Forwarded
    ) -> web.StreamResponse:
        """A member's request: a slot of this node's, no heartbeats (the entry
        node sends the phone its own) and no count for the user (the entry's)."""
        if forwarded.may_queue:
            permit = await admission.acquire(uid, None, Slots.NODE)
        else:
            now = await admission.try_now(uid, Slots.NODE)
            if isinstance(now, float):
                # The entry node tries its next member, or serves it itself.
                raise GatewayError(
                    503,
                    "This member has no free slot now.",
                    code="member_busy",
                    headers={"Retry-After": "1"},
                )
            permit = now
        try:
            return await handler(request)
        finally:
            admission.release(permit)

    async def hand_over(
        request: web.Request, handler: Handler, uid: str, ticket: Ticket, handover: Handover
    ) -> web.StreamResponse:
        """To members of the fog, holding the user's slot here; back here, with
        a slot of this node's, if every member declines before its first byte."""
        user = await admission.acquire(uid, ticket, Slots.USER)
        try:
            request[HANDOVER] = handover
            try:
                return await handler(request)
            except MembersDeclined:
                del request[HANDOVER]
            node = await admission.acquire(uid, ticket, Slots.NODE)
            try:
                return await handler(request)
            finally:
                admission.release(node)
        finally:
            admission.release(user)

    @web.middleware
    async def admission_control(request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = spec_for(request)
        if spec is None or not spec.limited:
            return await handler(request)
        principal = request.get(PRINCIPAL)
        uid = principal.uid if principal else "anonymous"
        forwarded = request.get(FORWARDED)
        if forwarded is not None:
            return await serve_forwarded(request, handler, uid, forwarded)
        body = request.get(REQUEST_BODY)
        keepalive = None
        if body is not None and body.streams_sse:
            keepalive = request[KEEPALIVE] = KeepAlive(request, heartbeats)
        ticket = Ticket()
        try:
            if keepalive is not None:

                async def queued() -> str | None:
                    position = await admission.position(ticket)
                    return f"queued {position}" if position is not None else None

                keepalive.status = queued
            permit = None
            model = body.model if body is not None else None
            if placement is not None and model and not spec.native:
                handover = placement.before_admission(model)
                if handover is None:
                    now = await admission.try_now(uid)
                    if isinstance(now, float):
                        handover = placement.instead_of_waiting(model, now)
                    else:
                        permit = now
                if handover is not None:
                    return await hand_over(request, handler, uid, ticket, handover)
            if permit is None:
                permit = await admission.acquire(uid, ticket)
            if keepalive is not None:
                keepalive.status = None
            try:
                return await handler(request)
            finally:
                admission.release(permit)
        except GatewayError as exc:
            if keepalive is not None and keepalive.started:
                # The 200 headers are out (the request waited long): in-band.
                log.warning("%s (%s), reported in-band", exc.message, exc.code)
                return await keepalive.fail(exc)
            raise
        finally:
            if keepalive is not None:
                keepalive.close()

    app.middlewares.append(admission_control)


class AdmissionCollector(Collector):
    """The admission counters, where the node's Admission is held."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        a = self.admission
        yield GaugeMetricFamily(
            "fognode_admission_active", "Inference slots in use.", value=a.active
        )
        yield GaugeMetricFamily(
            "fognode_admission_capacity", "Inference slots in all.", value=a.capacity
        )
        yield GaugeMetricFamily(
            "fognode_queue_depth", "Inference requests waiting for a slot.", value=a.queued
        )
        rejected = CounterMetricFamily(
            "fognode_admission_rejections",
            "Requests refused by admission control, by reason.",
            labels=["reason"],
        )
        rejected.add_metric(["user_concurrency_limit"], a.rejected_user)
        rejected.add_metric(["node_busy"], a.rejected_full)
        rejected.add_metric(["queue_timeout"], a.timed_out)
        yield rejected
