"""Slow down guessing at the sign-in form: per client, exponential, bounded.

Guessing an API key (256 random bits) or forging a Firebase token is
hopeless, so this is not what keeps credentials safe; it keeps a script from
turning the sign-in form into a way to burn the node's CPU (a Firebase
verification per attempt) and its log, and it bounds what a leaked, short
or reused credential list could try.

Every attempt counts as a failure until it succeeds: a client that sends
many attempts at once gets through with the first and waits for the rest.
After ``n`` failures in a row a client waits ``first_delay * 2**(n-1)``
seconds (at most ``max_delay``) before its next attempt is even checked; a
success forgets it. Memory is bounded: clients are kept in the order they
last failed, a client quiet for ``2 * max_delay`` is forgotten, and beyond
``max_clients`` the longest-quiet one is dropped (an attacker with many
addresses can so reset its own counters, never slow down anyone else).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Record:
    failures: int
    last: float  # when the latest attempt started


class FailureThrottle:
    def __init__(
        self,
        *,
        first_delay: float = 1.0,
        max_delay: float = 300.0,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.max_clients = max_clients
        self._clock = clock
        self._clients: OrderedDict[str, _Record] = OrderedDict()  # longest quiet first

    def __len__(self) -> int:
        return len(self._clients)

    def _delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        # min() before the power would overflow: 2**1100 is no float.
        return min(self.max_delay, self.first_delay * 2.0 ** min(failures - 1, 64))

    def retry_after(self, client: str) -> float:
        """Seconds before ``client`` may try again (0: now)."""
        self._forget_quiet()
        record = self._clients.get(client)
        if record is None:
            return 0.0
        return max(0.0, record.last + self._delay(record.failures) - self._clock())

    def attempt(self, client: str) -> None:
        """An attempt starts: it counts as a failure unless :meth:`succeeded` follows."""
        record = self._clients.pop(client, None) or _Record(0, 0.0)
        record.failures += 1
        record.last = self._clock()
        self._clients[client] = record
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)

    def _forget_quiet(self) -> None:
        horizon = self._clock() - 2 * self.max_delay
        while self._clients:
            oldest = next(iter(self._clients.values()))
            if oldest.last > horizon:
                break
            self._clients.popitem(last=False)
