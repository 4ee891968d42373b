"""Small helpers the test modules share."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable


def free_port() -> int:
    """A loopback port with nothing listening on it (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll a condition that no event signals (counters, socket lists, log lines).

    The limit only turns a hang into a failure; no test asserts on the time.
    """
    try:
        async with asyncio.timeout(limit):
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what}") from None
