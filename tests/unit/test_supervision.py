"""The restart policy embedded/ and workers/ share (supervision/restart.py)."""

from __future__ import annotations

import asyncio

from fognode.supervision import RestartPolicy, pause

POLICY = RestartPolicy(delay=1.0, max_delay=5.0, stable_after=30.0)


def test_restarts_in_a_row_double_up_to_the_cap() -> None:
    backoff = POLICY.backoff()
    assert [backoff.after_run(2.0) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_stable_run_starts_the_doubling_over() -> None:
    backoff = POLICY.backoff()
    assert [backoff.after_run(2.0) for _ in range(3)] == [1.0, 2.0, 4.0]
    assert backoff.after_run(30.0) == 1.0  # ran long enough: not a crash loop
    assert backoff.after_run(29.0) == 2.0


def test_a_start_that_fails_counts_as_one_more_restart_in_a_row() -> None:
    backoff = POLICY.backoff()
    assert backoff.after_run(2.0) == 1.0
    assert [backoff.next(), backoff.next()] == [2.0, 4.0]
    assert backoff.after_run(2.0) == 5.0


async def test_a_pause_ends_early_when_stopping() -> None:
    stopping = asyncio.Event()
    assert not await pause(0.01, stopping)
    asyncio.get_running_loop().call_soon(stopping.set)
    async with asyncio.timeout(5):  # a stop cuts an hour's backoff short
        assert await pause(3600, stopping)
