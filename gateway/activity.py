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
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from ..web.status import ErrorView, MinuteView
from .logs import redact

MAX_MESSAGE = 300
CLIENT_LEFT = 499


class Activity:
    def __init__(
        self, *, minutes: int = 15, errors: int = 20, clock: Callable[[], float] = time.time
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
