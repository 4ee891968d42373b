"""Verified tokens, remembered until they expire.

Phones fetch a fresh ID token per request but Firebase hands out the same
token for an hour, so a busy client would otherwise pay a full signature
verification (and, with revocation checks, a round trip to Google) per
request. Entries are keyed by the SHA-256 of the token — the token itself is
never kept — and the cache is bounded (least recently used goes first).

Concurrent requests with the same not-yet-verified token share one
verification instead of each starting their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class VerifiedCache(Generic[T]):
    def __init__(self, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[T, float]] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[tuple[T, float]]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, until = entry
        if self._clock() >= until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: bytes, value: T, until: float) -> None:
        if self.max_entries <= 0 or until <= self._clock():
            return
        self._entries[key] = (value, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def get_or_verify(
        self, key: bytes, verify: Callable[[], Awaitable[tuple[T, float]]]
    ) -> T:
        """Return the cached value, or run ``verify`` once for all concurrent callers.

        ``verify`` returns the value and the wall-clock time until which it
        may be reused; failures are not cached (the next request retries).
        """
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            value, _ = await asyncio.shield(pending)
            return value
        self.misses += 1
        future: asyncio.Future[tuple[T, float]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value, until = await verify()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: no "never retrieved" warning
            raise
        else:
            future.set_result((value, until))
            self.put(key, value, until)
            return value
        finally:
            self._inflight.pop(key, None)
