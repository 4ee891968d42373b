"""Admission against quotas, with in-flight requests counted.

A user's usage is known for sure only once their requests end, so a burst of
concurrent requests checked against recorded usage alone would all pass and
overshoot the budget together. The ledger closes that gap:

* **reserve at admission**: an admitted request holds a reservation of its
  estimated tokens (:func:`~.request_body.estimate_tokens`) and one request
  in the minute window, which every later check of the same user counts;
* **settle on completion**: :meth:`UsageLedger.settle` swaps the
  reservation for the real record in one synchronous step (no await in
  between, so no check sees neither or both), and hands the record to the
  batch writer;
* **records not yet written count too**: a check adds the writer's pending
  records to what the store reports. They are read *before* the store is
  queried, so a batch committed in between is counted twice for that one
  check (refusing a little early) rather than not at all;
* checks of one user are serialised (a per-user lock around read, decide and
  reserve), so two concurrent requests cannot both spend the last of a budget.

The ledger also keeps who is near a budget (past the warning share,
``QuotaOptions.warn_at``): the operator's log says so once per budget and
period (a day for tokens, a quiet minute for requests), and the status page
lists them until the budget resets (:meth:`UsageLedger.warnings`).

A request is admitted while the budget is not spent after reservations (its
own estimate need not fit, see :mod:`.quota`). Within one node the overshoot
past a daily budget is therefore at most what the last admitted request uses
beyond what was left, plus whatever the requests in flight use beyond their
estimates (none when they set ``max_tokens``, which bounds the estimate of
what they generate). Several nodes sharing PostgreSQL see each other's
records once they are flushed (``flush_seconds``) but not each other's
reservations, so across nodes the overshoot can grow by what the other nodes
have in flight for that user, which the per-user concurrency cap bounds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .options import Limits, QuotaOptions
from .quota import ALLOW_UNLIMITED, WINDOW_SECONDS, Decision, Usage, day_bounds, decide
from .record import UsageRecord
from .when import iso_utc
from .writer import BatchWriter

log = logging.getLogger("fognode.usage")

# Users the status page can list as near a budget: the most recent, at most.
MAX_WARNED = 1000
BUDGET_WORDS = {"tokens": "daily tokens", "requests": "requests per minute"}


@dataclass(eq=False, slots=True)
class Reservation:
    """One admitted request's hold on its user's budget until it ends (a
    refused request's is settled at once: it holds nothing)."""

    uid: str
    estimate: int
    started_at: float
    decision: Decision
    settled: bool = False


@dataclass(frozen=True, slots=True)
class BudgetWarning:
    """A user past the warning share of one budget, as of their latest request."""

    uid: str
    budget: str  # "tokens" (per day) or "requests" (per minute)
    used: int  # with the request that crossed it (its reservation, for tokens)
    limit: int
    resets: float  # Unix time the budget is whole again


class QuotaLedger(Protocol):
    """What the usage stage asks: :class:`UsageLedger` where this process holds
    the node's ledger, or a worker process's client of its supervisor's."""

    async def admit(self, uid: str, limits: Limits, *, estimate: int) -> Reservation: ...

    def settle(self, reservation: Reservation, record: UsageRecord) -> None: ...

    def record(self, record: UsageRecord) -> None: ...

    async def pending_records(self) -> int: ...

    async def usage(self, uid: str) -> Usage:
        """What ``uid`` has used now: stored, not yet stored, and reserved."""
        ...

    async def warnings(self) -> tuple[BudgetWarning, ...]:
        """Who is past the warning share of a budget that has not reset yet."""
        ...


class UsageLedger:
    def __init__(
        self,
        writer: BatchWriter,
        options: QuotaOptions,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.writer = writer
        self.options = options
        self._clock = clock
        self._inflight: dict[str, set[Reservation]] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._warned: dict[tuple[str, str], BudgetWarning] = {}  # oldest first

    async def admit(self, uid: str, limits: Limits, *, estimate: int) -> Reservation:
        """Decide on a new request of ``uid``. An allowed reservation holds a
        reservation until :meth:`settle`; a refused one holds nothing."""
        if limits.unlimited:
            reservation = Reservation(uid, estimate, self._clock(), ALLOW_UNLIMITED)
            self._inflight.setdefault(uid, set()).add(reservation)
            return reservation
        lock = self._lock(uid)
        try:
            async with lock:
                now = self._clock()
                _, day_end = day_bounds(now, self.options.day_start)
                usage = await self.usage(uid, now=now)
                decision = decide(
                    limits,
                    usage,
                    estimate=estimate,
                    now=now,
                    day_end=day_end,
                    warn_at=self.options.warn_at,
                )
                reservation = Reservation(
                    uid, estimate, now, decision, settled=not decision.allowed
                )
                if decision.allowed:
                    self._inflight.setdefault(uid, set()).add(reservation)
                    if decision.warnings:
                        self._warn(uid, limits, usage, estimate, now, day_end, decision.warnings)
                return reservation
        finally:
            self._unlock(uid)

    def settle(self, reservation: Reservation, record: UsageRecord) -> None:
        """The request ended: its record replaces its reservation. Calling it
        again for the same reservation does nothing, so nothing is counted twice."""
        if reservation.settled:
            return
        self.drop(reservation)
        self.writer.add(record)

    def drop(self, reservation: Reservation) -> None:
        """The request is gone without a record (its worker process died):
        its reservation ends, nothing is recorded."""
        if reservation.settled:
            return
        reservation.settled = True
        reservations = self._inflight.get(reservation.uid)
        if reservations is not None:
            reservations.discard(reservation)
            if not reservations:
                del self._inflight[reservation.uid]

    async def pending_records(self) -> int:
        """Records accepted but not yet known to be stored."""
        return len(self.writer.pending())

    def record(self, record: UsageRecord) -> None:
        """A request that never held a reservation (refused before admission)."""
        self.writer.add(record)

    def _warn(
        self,
        uid: str,
        limits: Limits,
        usage: Usage,
        estimate: int,
        now: float,
        day_end: float,
        budgets: tuple[str, ...],
    ) -> None:
        """Remember who is near a budget; tell the operator once per period."""
        for budget in budgets:
            if budget == "tokens":
                used, limit, resets = usage.tokens_today + estimate, limits.tokens_per_day, day_end
            else:
                used, limit = usage.requests_last_minute + 1, limits.requests_per_minute
                resets = now + WINDOW_SECONDS  # this request leaves the window last
            known = self._warned.pop((uid, budget), None)
            self._warned[(uid, budget)] = BudgetWarning(uid, budget, used, limit, resets)
            if known is None or known.resets <= now:
                log.warning(
                    "%s has used %d%% of their %s (%d of %d); it resets at %s",
                    uid,
                    min(100, 100 * used // limit),
                    BUDGET_WORDS[budget],
                    used,
                    limit,
                    iso_utc(resets),
                )
        while len(self._warned) > MAX_WARNED:
            del self._warned[next(iter(self._warned))]

    async def warnings(self) -> tuple[BudgetWarning, ...]:
        now = self._clock()
        for key in [k for k, w in self._warned.items() if w.resets <= now]:
            del self._warned[key]
        return tuple(sorted(self._warned.values(), key=lambda w: (w.uid, w.budget)))

    def in_flight(self, uid: str) -> int:
        return len(self._inflight.get(uid, ()))

    async def usage(self, uid: str, *, now: float | None = None) -> Usage:
        """What ``uid`` has used: stored, pending and reserved."""
        now = self._clock() if now is None else now
        day_start, _ = day_bounds(now, self.options.day_start)
        minute_start = now - WINDOW_SECONDS
        tokens = 0
        requests = 0
        times: list[float] = []
        for record in self.writer.pending():  # before the query: see the module docstring
            if record.uid != uid:
                continue
            if record.started_at >= day_start:
                tokens += record.total_tokens
            if record.counts_as_request and record.started_at >= minute_start:
                requests += 1
                times.append(record.started_at)
        for reservation in self._inflight.get(uid, ()):
            if reservation.started_at >= day_start:
                tokens += reservation.estimate
            if reservation.started_at >= minute_start:
                requests += 1
                times.append(reservation.started_at)
        stored = await self.writer.store.user_window(
            uid, day_start=day_start, minute_start=minute_start
        )
        times += [t for t in (stored.oldest_request, stored.newest_request) if t is not None]
        return Usage(
            tokens_today=stored.tokens_today + tokens,
            requests_last_minute=stored.requests_last_minute + requests,
            oldest_request=min(times, default=None),
            newest_request=max(times, default=None),
        )

    def _lock(self, uid: str) -> asyncio.Lock:
        lock, users = self._locks.get(uid, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[uid] = (lock, users + 1)
        return lock

    def _unlock(self, uid: str) -> None:
        lock, users = self._locks[uid]
        if users == 1:
            del self._locks[uid]
        else:
            self._locks[uid] = (lock, users - 1)
