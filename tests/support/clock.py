"""A clock the test moves by hand, for the parts that take one (``clock=``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Clock:
    """``clock.now += 30`` is half a minute later: nothing waits for time to pass."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now
