"""Whether the node drains: takes no new local work, for maintenance.

``fognode drain`` (and ``POST /admin/drain``) sets it; ``--off`` clears it.
A draining node hands every new request to a member of the fog (when there
is one that has the model; else it serves it after all, since a phone that
still holds its address has nowhere else to go), finishes its running
streams, withdraws its mDNS announcement and says "draining" in /readyz,
on the status page and in the state it serves its peers. Whoever holds the
node's admission holds the one flag (the supervisor, with worker processes;
the workers follow it); the callbacks do what a change means (the
announcement, the workers).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.since: float | None = None  # Unix time it started draining
        # Run on a change (the announcement withdrawn or back, workers told).
        self.on_change: list[Callable[[bool], Awaitable[None]]] = []

    async def set(self, draining: bool) -> bool:
        """Drain (True) or stop draining; returns whether anything changed."""
        if draining == self.draining:
            return False
        self.follow(draining)
        for callback in self.on_change:
            await callback(draining)
        return True

    def follow(self, draining: bool, since: float | None = None) -> None:
        """Take the node's flag as it is (a worker, from its supervisor)."""
        self.draining = draining
        self.since = (since or time.time()) if draining else None


DRAIN = web.AppKey("fognode.drain", Drain)
