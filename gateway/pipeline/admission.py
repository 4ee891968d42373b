"""The admission stage: how many inference requests reach the upstream at once,
and which waiting request goes next.

Ollama queues by itself, but without a bound the gateway cannot see (and
only up to OLLAMA_MAX_QUEUE, after which it answers 503 "server busy").
fognode owns the queue instead:

* a global cap on concurrent upstream requests, with a bounded wait queue;
  beyond it the node is full: 503 with Retry-After;
* a per-user cap (by uid) with its own small FIFO queue, so one client cannot
  take every slot (and a user's requests keep their order); beyond it: 429
  with Retry-After;
* priority classes in the node's queue (:class:`Classes`: ``interactive``
  above ``batch`` by default): when a slot frees, the waiting request of the
  highest class goes first, first come first served within a class; a class
  may have a maximum wait, and a request of it that would otherwise wait
  longer goes next whatever waits above it, so no class starves;
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
(worker.py), so a cap is never counted per process. A request's class
(shares.py decides it) travels with its acquire.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import logging
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ...fog.hop import Forwarded
from ..core.errors import GatewayError
from ..core.keys import FORWARDED, PRINCIPAL, SHARE
from .keepalive import HeartbeatOptions, KeepAlive
from .placement import HANDOVER, Handover, MembersDeclined, Placement
from .routes import spec_for
from .validation import REQUEST_BODY

log = logging.getLogger("fognode.gateway")


@dataclass(frozen=True, slots=True)
class PriorityClass:
    """One class of requests. ``max_wait``: the longest a request of it waits
    while requests of higher classes are served (seconds); None: no bound
    but the queue timeout (the highest class needs none)."""

    name: str
    max_wait: float | None = None


@dataclass(frozen=True)
class Classes:
    """The node's priority classes, highest first, and the class of a request
    that names none (or one this node does not know)."""

    order: tuple[PriorityClass, ...] = (PriorityClass("default"),)
    default: str = "default"

    def __post_init__(self) -> None:
        names = [c.name for c in self.order]
        if not names or len(set(names)) != len(names):
            raise ValueError("priority classes need distinct names, at least one")
        if self.default not in names:
            raise ValueError(f"the default class {self.default!r} is not one of {names}")
        if any(c.max_wait is not None and c.max_wait < 0 for c in self.order):
            raise ValueError("a class's maximum wait cannot be negative")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.order)

    def rank(self, name: str | None) -> int:
        """0 for the highest class; a name not known here is the default's."""
        names = self.names
        return names.index(name) if name in names else names.index(self.default)

    def known(self, name: str | None) -> str:
        """The class a request of ``name`` gets here."""
        return self.order[self.rank(name)].name


class _Waiter:
    """One request waiting at a gate."""

    __slots__ = ("due", "future", "queue", "rank", "since", "uid")

    def __init__(
        self,
        future: asyncio.Future[None],
        queue: int,
        rank: int,
        uid: str,
        since: float,
        due: float,
    ) -> None:
        self.future = future
        self.queue = queue  # which of its gate's queues it is in
        self.rank = rank  # its class (0: the highest)
        self.uid = uid
        self.since = since
        self.due = due  # when it goes next whatever waits above it (inf: never)


class _Gate:
    """A counting gate with a bounded queue of waiters, one FIFO per class.

    When a slot frees it goes to the head of the highest class, unless a
    head of some class is due (its wait would pass its class's maximum
    before another slot frees): then to the due head that is due first.
    A gate with one queue (a user's) takes every class in it: plain FIFO.
    """

    def __init__(
        self,
        capacity: int,
        max_waiting: int,
        max_waits: Sequence[float | None] = (None,),
        *,
        pace: Callable[[], float] = lambda: 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.max_waiting = max_waiting
        self.max_waits = tuple(max_waits)
        self.queues: list[deque[_Waiter]] = [deque() for _ in self.max_waits]
        self.active = 0
        self.waiting = 0
        self.overdue = [0] * len(self.max_waits)  # served ahead of a higher class, by class
        self._pace = pace  # seconds between two slots freeing, at the recent pace
        self._clock = clock

    def full(self) -> bool:
        return self.active >= self.capacity

    def queue_full(self) -> bool:
        return self.waiting >= self.max_waiting

    async def enter(
        self, wait_limit: float, ticket: Ticket | None = None, rank: int = 0, uid: str = ""
    ) -> None:
        if not self.full() and not self.waiting:
            self.active += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        now = self._clock()
        queue = min(rank, len(self.queues) - 1)
        bound = self.max_waits[queue]
        due = math.inf if bound is None else now + bound
        waiter = _Waiter(future, queue, rank, uid, now, due)
        self.queues[queue].append(waiter)
        self.waiting += 1
        if ticket is not None:
            ticket.gate, ticket.waiter = self, waiter
        try:
            async with asyncio.timeout(wait_limit):
                await future
        except BaseException:
            if future.done() and not future.cancelled():
                # The slot was handed to us just as we gave up: pass it on.
                self.leave()
            else:
                future.cancel()
                self._remove(waiter)
            raise
        finally:
            if ticket is not None:
                ticket.gate = ticket.waiter = None
        # leave() transferred its slot to us; active already counts it.

    def _remove(self, waiter: _Waiter) -> None:
        queue = self.queues[waiter.queue]
        try:
            queue.remove(waiter)
        except ValueError:
            return  # handed a slot, or removed already
        self.waiting -= 1

    def leave(self) -> None:
        while self.waiting:
            waiter = self._next()
            self.queues[waiter.queue].popleft()
            self.waiting -= 1
            if not waiter.future.done():
                waiter.future.set_result(None)  # hand the slot over without releasing it
                return
        self.active -= 1

    def _next(self) -> _Waiter:
        """Who goes next: the head due first, if one is due; else the highest class's."""
        heads = [queue[0] for queue in self.queues if queue]
        first = heads[0]
        soon = self._clock() + self._pace()
        due = min(heads, key=lambda w: w.due)
        if due.due <= soon and due is not first:
            self.overdue[due.queue] += 1
            return due
        return first

    def ahead(self, rank: int) -> int:
        """Waiters a newcomer of class ``rank`` would find ahead of it now."""
        soon = self._clock() + self._pace()
        return sum(
            len(queue) if r <= rank else sum(1 for w in queue if w.due <= soon)
            for r, queue in enumerate(self.queues)
        )

    def place(self, waiter: _Waiter) -> int | None:
        """1 for the next to get a slot, as things stand."""
        queue = self.queues[waiter.queue]
        try:
            index = queue.index(waiter)
        except ValueError:
            return None
        soon = self._clock() + self._pace()
        above = sum(len(q) for q in self.queues[: waiter.queue])
        below = sum(1 for q in self.queues[waiter.queue + 1 :] for w in q if w.due <= soon)
        return above + index + below + 1

    def waiters(self) -> Iterator[_Waiter]:
        for queue in self.queues:
            yield from queue


class Ticket:
    """Where one request waits, so its heartbeats can tell the client (``queued 3``)."""

    __slots__ = ("gate", "waiter")

    def __init__(self) -> None:
        self.gate: _Gate | None = None
        self.waiter: _Waiter | None = None


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
class Waiting:
    """A user with requests waiting, and how many (the status page's queue)."""

    uid: str
    requests: int


@dataclass(frozen=True, slots=True)
class ClassLoad:
    """One class's part of the queue: who waits, and the longest wait so far."""

    name: str
    queued: int
    longest: float  # seconds the longest-waiting request of the class has waited
    users: tuple[Waiting, ...]  # most requests first


@dataclass(frozen=True, slots=True)
class Load:
    """The node's slots in use and requests waiting, as the status page shows them."""

    active: int
    queued: int
    classes: tuple[ClassLoad, ...] = ()  # by class, highest first (the node's Admission)


# Wait-time buckets (seconds) of fognode_admission_wait_seconds.
WAIT_BUCKETS = (0.005, 0.05, 0.25, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _WaitTimes:
    """A histogram of waits for the node's slots, per class (Prometheus's
    cumulative form is made at scrape time)."""

    def __init__(self, classes: int) -> None:
        self.counts = [[0] * (len(WAIT_BUCKETS) + 1) for _ in range(classes)]
        self.sums = [0.0] * classes

    def observe(self, rank: int, seconds: float) -> None:
        self.counts[rank][bisect.bisect_left(WAIT_BUCKETS, seconds)] += 1
        self.sums[rank] += seconds


class Admission:
    def __init__(
        self,
        *,
        max_concurrent: int,
        max_queue: int,
        per_user_concurrent: int,
        per_user_queue: int,
        queue_timeout: float,
        classes: Classes = Classes(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.classes = classes
        self._clock = clock
        self.global_gate = _Gate(
            max_concurrent,
            max_queue,
            [c.max_wait for c in classes.order],
            pace=self._pace,
            clock=clock,
        )
        self.per_user_concurrent = per_user_concurrent
        self.per_user_queue = per_user_queue
        self.queue_timeout = queue_timeout
        self._users: dict[str, _Gate] = {}
        self._avg_seconds = 1.0  # EWMA of admitted request durations
        self.waits = _WaitTimes(len(classes.order))
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
        return self.global_gate.waiting + sum(g.waiting for g in self._users.values())

    def _pace(self) -> float:
        """Seconds between two of the node's slots freeing, at the recent pace."""
        return self._avg_seconds / max(1, self.global_gate.capacity)

    async def load(self) -> Load:
        return Load(self.active, self.queued, self.by_class())

    def by_class(self) -> tuple[ClassLoad, ...]:
        """Who waits in each class: in the node's queue, or at their own gate."""
        now = self._clock()
        per: list[Counter[str]] = [Counter() for _ in self.classes.order]
        oldest = [now] * len(per)
        gates = [self.global_gate, *self._users.values()]
        for waiter in (w for gate in gates for w in gate.waiters()):
            per[waiter.rank][waiter.uid] += 1
            oldest[waiter.rank] = min(oldest[waiter.rank], waiter.since)
        return tuple(
            ClassLoad(
                c.name,
                sum(users.values()),
                round(now - since, 3),
                tuple(Waiting(uid, n) for uid, n in users.most_common()),
            )
            for c, users, since in zip(self.classes.order, per, oldest, strict=True)
        )

    async def position(self, ticket: Ticket) -> int | None:
        """1 for the next request to get a slot; None once admitted (or not waiting).

        A request still in its user's queue also waits behind everyone in the
        node's queue who would go before it.
        """
        gate, waiter = ticket.gate, ticket.waiter
        if gate is None or waiter is None:
            return None
        place = gate.place(waiter)
        if place is None or gate is self.global_gate:
            return place
        return place + self.global_gate.ahead(waiter.rank)

    def _retry_after(self, ahead: int, capacity: int) -> str:
        return str(max(1, math.ceil(self._avg_seconds * (ahead + 1) / max(1, capacity))))

    def expected_wait(self, priority: str | None = None) -> float:
        """Seconds a new request of class ``priority`` would wait for one of the
        node's slots (0: one is free): the queue ahead, served at the recent pace."""
        gate = self.global_gate
        if not gate.full() and not gate.waiting:
            return 0.0
        ahead = gate.ahead(self.classes.rank(priority))
        return self._avg_seconds * (ahead + 1) / max(1, gate.capacity)

    def try_acquire(
        self, uid: str, slots: Slots = Slots.BOTH, priority: str | None = None
    ) -> Permit | None:
        """Slots for ``uid`` now, when they are free and nobody waits for
        them; None otherwise (then :meth:`acquire` queues or refuses). No
        await: most requests find a slot free, and take it in one step."""
        user: _Gate | None = None
        if slots is not Slots.NODE:
            user = self._users.get(uid)
            if user is not None and (user.full() or user.waiting):
                return None
        gate = self.global_gate
        if slots is not Slots.USER and (gate.full() or gate.waiting):
            return None
        if slots is not Slots.NODE:
            if user is None:
                user = self._users[uid] = self._user_gate()
            user.active += 1
        if slots is not Slots.USER:
            gate.active += 1
            self.waits.observe(self.classes.rank(priority), 0.0)
        return Permit(uid, user, self._clock(), node=slots is not Slots.USER)

    def _user_gate(self) -> _Gate:
        # One FIFO: a user's requests keep their order, whatever their class.
        return _Gate(self.per_user_concurrent, self.per_user_queue, clock=self._clock)

    async def acquire(
        self,
        uid: str,
        ticket: Ticket | None = None,
        slots: Slots = Slots.BOTH,
        priority: str | None = None,
    ) -> Permit:
        """Wait for a slot for ``uid``: its own first, then the node's, in the
        queue of its class (``priority``; None or unknown: the default)."""
        permit = self.try_acquire(uid, slots, priority)
        if permit is not None:
            return permit
        rank, started = self.classes.rank(priority), self._clock()
        if slots is Slots.NODE:
            await self._enter_node(ticket, rank, uid, started)
            return Permit(uid, None, self._clock())
        user = self._users.get(uid)
        if user is None:
            user = self._users[uid] = self._user_gate()
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
                        "Retry-After": self._retry_after(user.waiting, self.per_user_concurrent)
                    },
                )
            await self._enter(user, ticket, rank, uid)
            if slots is Slots.BOTH:
                try:
                    await self._enter_node(ticket, rank, uid, started)
                except BaseException:
                    user.leave()
                    raise
        except BaseException:
            self._forget_idle(uid, user)
            raise
        return Permit(uid, user, self._clock(), node=slots is Slots.BOTH)

    async def _enter_node(self, ticket: Ticket | None, rank: int, uid: str, started: float) -> None:
        """One of the node's slots, in the queue of class ``rank``; the wait
        since ``started`` (the user's own gate included) is counted by class."""
        gate = self.global_gate
        if gate.full() and gate.queue_full():
            self.rejected_full += 1
            raise GatewayError(
                503,
                f"The node is busy: {gate.capacity} requests running and "
                f"{gate.waiting} waiting; retry later.",
                code="node_busy",
                headers={"Retry-After": self._retry_after(gate.waiting, gate.capacity)},
            )
        await self._enter(gate, ticket, rank, uid)
        self.waits.observe(rank, self._clock() - started)

    def release(self, permit: Permit) -> None:
        if permit.node:
            self.global_gate.leave()
            elapsed = self._clock() - permit.started
            self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * elapsed
        if permit.user is not None:
            permit.user.leave()
            self._forget_idle(permit.uid, permit.user)

    async def try_now(
        self, uid: str, slots: Slots = Slots.BOTH, priority: str | None = None
    ) -> Permit | float:
        """Slots now, or the seconds a request would wait for them (placement
        asks before it decides where a request runs)."""
        permit = self.try_acquire(uid, slots, priority)
        return permit if permit is not None else self.expected_wait(priority)

    @asynccontextmanager
    async def admit(
        self, uid: str, ticket: Ticket | None = None, priority: str | None = None
    ) -> AsyncIterator[None]:
        permit = await self.acquire(uid, ticket, priority=priority)
        try:
            yield
        finally:
            self.release(permit)

    def _forget_idle(self, uid: str, user: _Gate) -> None:
        if user.active == 0 and not user.waiting and self._users.get(uid) is user:
            del self._users[uid]

    async def _enter(self, gate: _Gate, ticket: Ticket | None, rank: int, uid: str) -> None:
        """Wait at ``gate``, in the queue of class ``rank`` where it has one per class."""
        try:
            await gate.enter(self.queue_timeout, ticket, rank, uid)
        except TimeoutError:
            self.timed_out += 1
            raise GatewayError(
                503,
                f"Waited {self.queue_timeout:g}s for a free slot on this node; retry later.",
                code="queue_timeout",
                headers={"Retry-After": self._retry_after(gate.waiting, gate.capacity)},
            ) from None


PermitT = TypeVar("PermitT")


class AdmissionControl(Protocol[PermitT]):
    """What the stage needs of admission: Admission here, or a worker's client of it."""

    @property
    def capacity(self) -> int: ...

    async def acquire(
        self,
        uid: str,
        ticket: Ticket | None = None,
        slots: Slots = Slots.BOTH,
        priority: str | None = None,
    ) -> PermitT: ...

    async def try_now(
        self, uid: str, slots: Slots = Slots.BOTH, priority: str | None = None
    ) -> PermitT | float: ...

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
    app.middlewares.append(AdmissionStage(admission, heartbeats, placement).stage)


class AdmissionStage(Generic[PermitT]):
    """The stage that gives a limited request its slot: here, at a member of
    the fog, or (a member's request) in the queue its entry node asked for.

    A request that streams waits with heartbeats (``queued N``), and an error
    that comes after its 200 headers went out is reported in the stream.
    """

    def __init__(
        self,
        admission: AdmissionControl[PermitT],
        heartbeats: HeartbeatOptions,
        placement: Placement | None,
    ) -> None:
        self.admission = admission
        self.heartbeats = heartbeats
        self.placement = placement

    @web.middleware
    async def stage(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = spec_for(request)
        if spec is None or not spec.limited:
            return await handler(request)
        principal = request.get(PRINCIPAL)
        uid = principal.uid if principal else "anonymous"
        share = request.get(SHARE)
        priority = share.priority if share is not None else None
        forwarded = request.get(FORWARDED)
        if forwarded is not None:
            return await self.serve_forwarded(request, handler, uid, priority, forwarded)
        body = request.get(REQUEST_BODY)
        keepalive = None
        if body is not None and body.streams_sse:
            keepalive = request[KEEPALIVE] = KeepAlive(request, self.heartbeats)
        ticket = Ticket()
        try:
            if keepalive is not None:
                keepalive.status = self._queued(ticket)
            model = body.model if body is not None else None
            placed: PermitT | Handover | None = None
            if self.placement is not None and model and not spec.native:
                placed = await self._place(self.placement, model, uid, priority)
            if isinstance(placed, Handover):
                return await self.hand_over(request, handler, uid, priority, ticket, placed)
            if placed is None:
                permit = await self.admission.acquire(uid, ticket, Slots.BOTH, priority)
            else:
                permit = placed
            if keepalive is not None:
                keepalive.status = None
            try:
                return await handler(request)
            finally:
                self.admission.release(permit)
        except GatewayError as exc:
            if keepalive is not None and keepalive.started:
                # The 200 headers are out (the request waited long): in-band.
                log.warning("%s (%s), reported in-band", exc.message, exc.code)
                return await keepalive.fail(exc)
            raise
        finally:
            if keepalive is not None:
                keepalive.close()

    def _queued(self, ticket: Ticket) -> Callable[[], Awaitable[str | None]]:
        """What a waiting stream's heartbeats say: its place in the queue."""

        async def queued() -> str | None:
            position = await self.admission.position(ticket)
            return f"queued {position}" if position is not None else None

        return queued

    async def _place(
        self, placement: Placement, model: str, uid: str, priority: str | None
    ) -> PermitT | Handover | None:
        """Here, with a slot free now (its permit); at a member (the
        handover); or None: it waits here like any request."""
        handover = placement.before_admission(model)
        if handover is not None:
            return handover
        now = await self.admission.try_now(uid, Slots.BOTH, priority)
        if isinstance(now, float):
            return placement.instead_of_waiting(model, now)
        return now

    async def serve_forwarded(
        self,
        request: web.Request,
        handler: Handler,
        uid: str,
        priority: str | None,
        forwarded: Forwarded,
    ) -> web.StreamResponse:
        """A member's request: a slot of this node's in the queue of the class
        its entry asserted, no heartbeats (the entry node sends the phone its
        own) and no count for the user (the entry's)."""
        if forwarded.may_queue:
            permit = await self.admission.acquire(uid, None, Slots.NODE, priority)
        else:
            now = await self.admission.try_now(uid, Slots.NODE, priority)
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
            self.admission.release(permit)

    async def hand_over(
        self,
        request: web.Request,
        handler: Handler,
        uid: str,
        priority: str | None,
        ticket: Ticket,
        handover: Handover,
    ) -> web.StreamResponse:
        """To members of the fog, holding the user's slot here; back here, with
        a slot of this node's, if every member declines before its first byte."""
        user = await self.admission.acquire(uid, ticket, Slots.USER, priority)
        try:
            request[HANDOVER] = handover
            try:
                return await handler(request)
            except MembersDeclined:
                del request[HANDOVER]
            node = await self.admission.acquire(uid, ticket, Slots.NODE, priority)
            try:
                return await handler(request)
            finally:
                self.admission.release(node)
        finally:
            self.admission.release(user)


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
        yield from self._classes(a)

    @staticmethod
    def _classes(a: Admission) -> Iterator[Metric]:
        names = a.classes.names
        waiting = GaugeMetricFamily(
            "fognode_queue_depth_by_class",
            "Inference requests waiting for a slot, by priority class.",
            labels=["class"],
        )
        for load in a.by_class():
            waiting.add_metric([load.name], load.queued)
        yield waiting
        waits = HistogramMetricFamily(
            "fognode_admission_wait_seconds",
            "How long admitted requests waited for one of the node's slots, by priority class.",
            labels=["class"],
        )
        for name, counts, total in zip(names, a.waits.counts, a.waits.sums, strict=True):
            cumulative, buckets = 0, []
            for bound, count in zip([*WAIT_BUCKETS, math.inf], counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else f"{bound:g}", cumulative))
            waits.add_metric([name], buckets, total)
        yield waits
        overdue = CounterMetricFamily(
            "fognode_admission_overdue",
            "Requests served ahead of a higher class because they reached their class's "
            "maximum wait, by priority class.",
            labels=["class"],
        )
        for name, count in zip(names, a.global_gate.overdue, strict=True):
            overdue.add_metric([name], count)
        yield overdue
