"""How fast one upstream (or peer) has been lately: what expected starts are made of.

Three moving averages (exponentially weighted, so that a machine that slows
down, or a model that changes, shows within a few requests):

* ``service``: seconds between two requests finishing there while it is
  busy (a request's time from being sent, or from the previous one
  finishing if that was later, to the end of its answer). With one request
  at a time that is how long one takes; with several it is the pace at which
  slots free up; either way the wait behind ``n`` requests is ``n`` times it.
  Measured so, a request that waited in the upstream's own queue (Ollama
  queues beyond its parallel requests) does not count its waiting as work;
* ``first_byte``: seconds to the answer's first byte when the model was
  loaded (the time to first token);
* ``load``: what a cold start added to the first byte (a request sent while
  the model was not loaded, minus the usual first byte): the cost of loading.

Nothing is known until it is measured: routing treats an unknown service time
as "could be long" and an unknown load time as the operator's estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WEIGHT = 0.3  # of the newest sample


def _mix(old: float | None, sample: float) -> float:
    return sample if old is None else old + WEIGHT * (sample - old)


@dataclass
class Pace:
    service: float | None = None
    first_byte: float | None = None
    load: float | None = None
    last_end: float = -math.inf  # when a request last finished there (the owner's clock)

    def answered(self, seconds: float, *, cold: bool) -> None:
        """The answer's first byte came ``seconds`` after sending."""
        if cold:
            self.load = _mix(self.load, max(0.0, seconds - (self.first_byte or 0.0)))
        else:
            self.first_byte = _mix(self.first_byte, seconds)

    def finished(self, sent: float, now: float) -> None:
        """An answer sent at ``sent`` ended at ``now``."""
        self.service = _mix(self.service, now - max(sent, self.last_end))
        self.last_end = now

    def busy_for(self, oldest: float, now: float) -> float:
        """Seconds without a request finishing, for an upstream whose oldest
        request in flight was sent at ``oldest``."""
        return now - max(oldest, self.last_end)

    def load_seconds(self, default: float) -> float:
        """The expected time to load a model here."""
        return default if self.load is None else self.load
