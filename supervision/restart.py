"""When to start a child again after it exited unasked.

The first restart waits ``delay``; each further one in a row waits twice as
long as the one before, up to ``max_delay``. A child that ran for
``stable_after`` seconds before it exited starts the doubling over: a crash
a day is not a crash loop. A start that fails at once (the program cannot
even be spawned) counts as one more restart in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    delay: float  # seconds before the first restart
    max_delay: float  # the doubling stops here
    stable_after: float  # a run this long starts the doubling over

    def backoff(self) -> Backoff:
        """The delays of one child's restarts, from the first."""
        return Backoff(self)


class Backoff:
    """One child's restart delays under a :class:`RestartPolicy`."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._next = policy.delay

    def after_run(self, ran: float) -> float:
        """The delay before the next start, after a run of ``ran`` seconds
        that ended unasked."""
        if ran >= self.policy.stable_after:
            self._next = self.policy.delay
        return self.next()

    def next(self) -> float:
        """The delay before the next start (after a start that failed: the
        run before it did not end the series); the one after doubles."""
        delay = self._next
        self._next = min(delay * 2, self.policy.max_delay)
        return delay


async def pause(delay: float, stopping: asyncio.Event) -> bool:
    """Wait out ``delay`` seconds, or less if ``stopping`` is set meanwhile;
    True when it was (then nothing is started again)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stopping.wait()
    return stopping.is_set()
