"""What the node did in the last minutes, for the status page.

The request-context stage hands every finished request to
:meth:`Activity.record` (one call, a few integer updates): a ring of
per-minute counts (requests, 4xx, 5xx) for the last ``minutes`` minutes, and
a bounded deque of the latest errors with their request ids, so an operator
can find the matching log lines. Memory is fixed, whatever the traffic.

What counts as an error: a 4xx or 5xx answer, and a failure reported inside
a stream whose 200 was already sent (the stage that reports it leaves its
words in the request's ``FAILURE``). A client that leaves (499) is not an
error of the node. Messages are scrubbed of anything shaped like a
credential (logs.redact) and cut short; routes are their patterns, never
raw paths, so nothing a client typed ends up on the page verbatim except
in the error's own message.

The operator's own pages (status, sign-in) are not counted: an open status
page polls every few seconds and would drown the traffic it shows.

With worker processes each worker counts its own requests; the page shows
the node's: the supervisor asks every worker for its :class:`ActivityView`
and :func:`merged` sums them, minute by minute, latest errors interleaved.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ...web.status import ErrorView, MinuteView
from .logs import redact

MAX_MESSAGE = 300
CLIENT_LEFT = 499
ERRORS = 20  # latest errors kept, and shown


@dataclass(frozen=True)
class ActivityView:
    """What the status page shows of what the node does: the minutes and
    latest errors of :class:`Activity`, and the live counts. One process's,
    or every worker's summed by :func:`merged`."""

    minutes: list[MinuteView]  # oldest first
    errors: list[ErrorView]  # newest first
    active_streams: int
    in_flight: int  # requests sent upstream and not finished
    connections: int | None  # client connections open (None: not known)
    upstreams: list[int]  # requests in flight to each upstream, in the configured order
    # The fog: requests handed to each member and received from it, by its name.
    fog: dict[str, list[int]] = field(default_factory=dict)


def merged(views: Sequence[ActivityView], errors: int = ERRORS) -> ActivityView:
    """The node's view from each worker's: counts summed minute by minute (the
    latest minutes as long as the longest view), the ``errors`` latest errors."""
    minutes: dict[float, list[int]] = {}
    for view in views:
        for m in view.minutes:
            counts = minutes.setdefault(m.start, [0, 0, 0])
            counts[0] += m.requests
            counts[1] += m.client_errors
            counts[2] += m.server_errors
    span = max((len(v.minutes) for v in views), default=0)
    starts = sorted(minutes)[-span:] if span else []
    latest = sorted((e for v in views for e in v.errors), key=lambda e: e.at, reverse=True)
    known = [v.connections for v in views if v.connections is not None]
    fog: dict[str, list[int]] = {}
    for view in views:
        for name, (handed, received) in view.fog.items():
            counts = fog.setdefault(name, [0, 0])
            counts[0] += handed
            counts[1] += received
    return ActivityView(
        [MinuteView(start, *minutes[start]) for start in starts],
        latest[:errors],
        sum(v.active_streams for v in views),
        sum(v.in_flight for v in views),
        sum(known) if known else None,
        [sum(counts) for counts in zip(*(v.upstreams for v in views), strict=True)],
        fog,
    )


class Activity:
    def __init__(
        self, *, minutes: int = 15, errors: int = ERRORS, clock: Callable[[], float] = time.time
    ) -> None:
        self.minutes = minutes
        self._clock = clock
        # Slot i holds the minute whose number is i modulo `minutes`, if still current.
        self._stamps = [-1] * minutes
        self._counts = [[0, 0, 0] for _ in range(minutes)]  # requests, 4xx, 5xx
        self._errors: deque[ErrorView] = deque(maxlen=errors)
        self._not_counted: set[str] = set()

    def not_counted(self, route: str) -> None:
        """Leave this route (its pattern) out: the operator's own pages."""
        self._not_counted.add(route)

    def record(
        self,
        *,
        method: str,
        route: str,
        status: int,
        request_id: str,
        uid: str | None,
        failure: str | None,
    ) -> None:
        if route in self._not_counted:
            return
        now = self._clock()
        minute = int(now // 60)
        slot = minute % self.minutes
        counts = self._counts[slot]
        if self._stamps[slot] != minute:
            self._stamps[slot] = minute
            counts[0] = counts[1] = counts[2] = 0
        counts[0] += 1
        if status == CLIENT_LEFT:
            return
        if status >= 500 or (failure is not None and status < 400):
            counts[2] += 1
        elif status >= 400:
            counts[1] += 1
        else:
            return
        message = redact(failure or f"HTTP {status}")
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
        self._errors.appendleft(ErrorView(now, request_id, method, route, status, uid, message))

    def per_minute(self) -> list[MinuteView]:
        """The last ``minutes`` minutes, oldest first, the current one last."""
        current = int(self._clock() // 60)
        out = []
        for minute in range(current - self.minutes + 1, current + 1):
            slot = minute % self.minutes
            counts = self._counts[slot] if self._stamps[slot] == minute else [0, 0, 0]
            out.append(MinuteView(minute * 60.0, counts[0], counts[1], counts[2]))
        return out

    def latest_errors(self) -> list[ErrorView]:
        """Newest first."""
        return list(self._errors)
