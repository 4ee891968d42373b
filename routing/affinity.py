"""The conversation table: which upstream served a conversation last.

Bounded (least recently remembered forgotten first) and with expiry: an
upstream's cache does not hold a prompt forever (Ollama unloads an idle
model after 5 minutes; a llama.cpp slot keeps its prompt only until another
request takes the slot), so an old entry would send a conversation to an
upstream for nothing. Entries hold 16-byte digests and an upstream's
position, about 150 bytes each.

The table is the node's: with worker processes it lives in the supervisor
and a worker reaches it through a :class:`ConversationMemory` that asks
over its channel, so a conversation's next turn finds its upstream
whichever worker the kernel hands the connection to.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol


class ConversationMemory(Protocol):
    """The node's table as the upstream pool uses it: a table in this process,
    or the supervisor's, asked over a worker's channel (hence async)."""

    async def recall(self, lookups: Sequence[bytes]) -> int | None:
        """The upstream of the first key remembered, in the order given."""
        ...

    def remember(self, key: bytes, upstream: int) -> None: ...


class AffinityTable:
    def __init__(
        self, capacity: int, ttl: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, keys: Iterable[bytes]) -> int | None:
        """The upstream of the first key still remembered, in the order given."""
        now = self._clock()
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            upstream, expires = entry
            if expires > now:
                return upstream
            del self._entries[key]
        return None

    async def recall(self, lookups: Sequence[bytes]) -> int | None:
        return self.find(lookups)

    def remember(self, key: bytes, upstream: int) -> None:
        now = self._clock()
        self._entries[key] = (upstream, now + self.ttl)
        self._entries.move_to_end(key)
        # The oldest entries are the first to expire: drop those, then any
        # beyond the bound.
        while self._entries:
            oldest, (_, expires) = next(iter(self._entries.items()))
            if expires > now and len(self._entries) <= self.capacity:
                break
            del self._entries[oldest]
