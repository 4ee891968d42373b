"""A circuit breaker: when to take an upstream (or a fog peer) out, and when back in.

Routing must not keep sending requests to a place that fails, nor forget it
for long once it answers again, nor mistake a place that is merely full for
one that is gone:

* **out after a short, bounded time.** A failure to connect at all (refused,
  no route, no connection within the connect timeout) is definitive: out at
  once. Other failures (a connection dropped before the answer, no answer in
  time) count: out after ``failures`` in a row, or once the first of them is
  ``window`` seconds old, whichever comes first. After the first failure the
  owner probes at once and every ``cooldown`` seconds, so even without
  traffic the verdict comes within ``failures`` probes.
* **back in when it answers (half-open).** An open breaker lets nothing
  through; ``cooldown`` seconds after it opened it asks for one probe (the
  owner sends a cheap request of its own, never a client's), and a probe
  that is answered closes it. A failed probe opens it again for twice as
  long, up to ``max_cooldown``: a machine that is off costs one probe now
  and then, one that comes back is back within a probe. Until a request
  succeeds there, a failure takes it out again at once (for longer): a
  place that answers probes but fails requests does not flap in and out.
* **busy is load, not absence.** An answer "busy" (Ollama's 503 "server
  busy", llama.cpp's 503 "Loading model" or no free slot) proves the place is
  alive: it clears the failure count, and for ``busy_seconds`` (or the
  Retry-After it sent) the place counts as full, so that routing sends the
  next request elsewhere instead of reading "no request in flight" as idle.

The owner reports what happened (:meth:`Breaker.success`,
:meth:`Breaker.failure`, :meth:`Breaker.busy`) and asks :meth:`Breaker.out`,
:meth:`Breaker.busy_now` and :meth:`Breaker.probe_at`. No I/O and no HTTP in
here, and a clock that tests control.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class State(Enum):
    CLOSED = "closed"  # in: requests go to it (perhaps with a failure or two counted)
    OPEN = "open"  # out: nothing goes to it until the next probe
    HALF_OPEN = "half-open"  # out, one probe in flight: its answer decides


@dataclass(frozen=True)
class BreakerOptions:
    failures: int = 3  # failures in a row that take it out
    window: float = 5.0  # ... or failing for this long
    cooldown: float = 1.0  # seconds out before the first probe, and between probes
    max_cooldown: float = 30.0  # the longest time out between two probes
    busy_seconds: float = 2.0  # how long a busy answer without Retry-After counts as full


class Breaker:
    def __init__(
        self, options: BreakerOptions, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.options = options
        self._clock = clock
        self.state = State.CLOSED
        self.failures = 0  # in a row, since the last answer
        self._failing_since: float | None = None
        self._opened_for = 0.0  # the current time out (doubles on failed probes)
        self._probe_at: float | None = None  # when the owner should probe next
        self._busy_until = 0.0
        self.trips = 0  # times it was taken out (for metrics)

    # --- what happened -----------------------------------------------------------
    def success(self, *, probe: bool = False) -> bool:
        """It answered: a request, or (``probe``) a check. True when this
        brought it back in.

        A check's answer proves less than a request's (an upstream can list
        its models and still fail every generation): it brings it back in,
        but until a request succeeds there the next failure takes it out
        again, for longer; and failures counted while it was in still count.
        """
        back = self.state is not State.CLOSED
        self.state = State.CLOSED
        self._probe_at = None
        if back or not probe:
            self.failures = 0
            self._failing_since = None
        if not probe:
            self._opened_for = 0.0
        return back

    def failure(self, *, definitive: bool = False, started: float | None = None) -> bool:
        """An attempt failed; ``started``: when that attempt began (a timeout
        shows how long it has been failing). True when this took it out."""
        now = self._clock()
        began = min(now, started) if started is not None else now
        if self.state is not State.CLOSED:
            # A failed probe (or a request that raced the opening): out for longer.
            self._open(now, longer=True)
            return False
        if self._opened_for:
            # Back in on a check's word only, and failing again: out, for longer.
            self._open(now, longer=True)
            return True
        self.failures += 1
        if self._failing_since is None:
            self._failing_since = began
        over = now - self._failing_since >= self.options.window
        if definitive or over or self.failures >= self.options.failures:
            self._open(now, longer=False)
            return True
        # Confirm it soon, whether or not requests come: at once, then every cooldown.
        self._probe_at = now if self.failures == 1 else now + self.options.cooldown
        return False

    def trip(self) -> bool:
        """Whoever checks for the node found it out (a worker follows its
        supervisor's verdict). True when this took it out."""
        if self.state is not State.CLOSED:
            return False
        self._open(self._clock(), longer=False)
        return True

    def busy(self, retry_after: float | None = None) -> None:
        """It answered "busy": alive, and full for a moment."""
        self.success()
        wait = retry_after if retry_after is not None and retry_after > 0 else None
        self._busy_until = self._clock() + (wait or self.options.busy_seconds)

    def probing(self) -> None:
        """The owner sends the probe it was asked for."""
        self._probe_at = None
        if self.state is State.OPEN:
            self.state = State.HALF_OPEN

    # --- what the owner asks -----------------------------------------------------------
    @property
    def out(self) -> bool:
        """Taken out: requests go elsewhere (or, when nothing else has the model, here anyway)."""
        return self.state is not State.CLOSED

    def busy_now(self) -> bool:
        return self._clock() < self._busy_until

    def busy_for(self) -> float:
        """Seconds until the busy answer stops counting (0: not busy)."""
        return max(0.0, self._busy_until - self._clock())

    def probe_at(self) -> float | None:
        """When (on the breaker's clock) the owner should probe it; None: no probe needed."""
        if self.state is State.HALF_OPEN:
            return None  # one probe is in flight
        return self._probe_at

    def _open(self, now: float, *, longer: bool) -> None:
        if self.state is State.CLOSED:
            self.trips += 1
        first = self.options.cooldown
        self._opened_for = min(
            self.options.max_cooldown,
            self._opened_for * 2 if longer and self._opened_for else first,
        )
        self.state = State.OPEN
        self._probe_at = now + self._opened_for
