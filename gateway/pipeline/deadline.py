"""A deadline for a loop that waits again and again (a stream's reads, its writes).

``async with asyncio.timeout(...)`` around every read and every write of a
stream made two Timeout objects and two timer handles per relayed chunk, and
re-scheduling a timer costs a heap operation each time. A stream's
deadlines mostly move later by a little with every chunk, and almost never
fire. So a :class:`Deadline` keeps one timer handle and only moves a number
when the deadline moves later; when the handle comes due early it re-arms
itself for the deadline as it is then. A new handle is made only when the
deadline moves earlier than the one scheduled, or after it came due.

When the deadline passes, the waiting task is cancelled (as asyncio.timeout
does it); the code around the wait catches ``CancelledError`` and asks
:meth:`Deadline.expired`, which takes the cancellation back and says it was
this deadline, or says no (the task really was cancelled: the client left).
"""

from __future__ import annotations

import asyncio
import math


class Deadline:
    """One timer for the waits of one task, re-armed without allocating."""

    __slots__ = ("_at", "_cancelling", "_fired", "_handle", "_loop", "_task")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "a deadline belongs to a task"
        self._task = task
        self._at = math.inf
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False
        self._cancelling = 0

    def at(self, when: float) -> None:
        """Cancel the task's wait at loop time ``when`` unless moved or cleared first."""
        self._at = when
        handle = self._handle
        if handle is None or handle.when() > when:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(when, self._due)

    def clear(self) -> None:
        """No deadline for now (the scheduled handle, if any, will find none)."""
        self._at = math.inf

    def close(self) -> None:
        self._at = math.inf
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _due(self) -> None:
        self._handle = None
        at = self._at
        if at == math.inf:
            return
        if self._loop.time() < at:  # moved later since the handle was made
            self._handle = self._loop.call_at(at, self._due)
            return
        self._at = math.inf
        self._fired = True
        self._cancelling = self._task.cancelling()
        self._task.cancel()

    def expired(self) -> bool:
        """After a CancelledError: was it this deadline? Then the cancellation
        is taken back. False when the task was (also) cancelled for real."""
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() <= self._cancelling
