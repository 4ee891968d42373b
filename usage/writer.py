"""Writes records to the store in small batches, off the request path.

A request ends with :meth:`BatchWriter.add`, which only appends to a list:
no I/O, no await, so it is safe in a ``finally`` of a cancelled handler. A
background task writes what has gathered when ``flush_records`` are waiting
or ``flush_seconds`` after the first one arrived, one transaction per batch.
A failed write (the database restarting) is retried with backoff; the
records stay in memory meanwhile, up to ``buffer_limit``, beyond which new
ones are dropped and counted in ``dropped`` rather than grow without bound.

Records not yet written still count for quotas: :meth:`pending` shows them
(including the batch being written) to the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from .options import StoreOptions
from .record import UsageRecord
from .store import UsageStore

log = logging.getLogger("fognode.usage")

_MAX_BACKOFF = 30.0


class BatchWriter:
    def __init__(
        self,
        store: UsageStore,
        options: StoreOptions,
        *,
        on_flushed: Callable[[Sequence[UsageRecord]], None] | None = None,
    ) -> None:
        self.store = store
        self._flush_records = options.flush_records
        self._flush_seconds = options.flush_seconds
        self._limit = options.buffer_limit
        self._on_flushed = on_flushed
        self._buffer: list[UsageRecord] = []
        self._writing: Sequence[UsageRecord] = ()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0
        self.batches = 0
        self.dropped = 0
        self.failures = 0

    # --- the request path ----------------------------------------------------
    def add(self, record: UsageRecord) -> None:
        if len(self._buffer) + len(self._writing) >= self._limit:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error(
                    "usage store behind or unreachable, %d records waiting: %d dropped so far",
                    self._limit,
                    self.dropped,
                )
            return
        self._buffer.append(record)
        if len(self._buffer) == 1 or len(self._buffer) >= self._flush_records:
            self._wake.set()

    def pending(self) -> list[UsageRecord]:
        """Records accepted but not yet known to be stored."""
        return [*self._writing, *self._buffer]

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fognode-usage-writer")

    async def close(self, grace: float = 10.0) -> None:
        """Write what is left (trying for up to ``grace`` seconds), then stop."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            await self.flush()
        else:
            try:
                async with asyncio.timeout(grace):
                    await asyncio.shield(self._task)
            except TimeoutError:
                log.error("usage store: %d records not written at shutdown", len(self.pending()))
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None

    async def flush(self) -> None:
        """Write everything waiting now (tests, shutdown without the task)."""
        while self._buffer:
            await self._write_batch()

    # --- the background task ------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.0
        failed = 0  # consecutive failures
        while True:
            if not self._buffer:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                continue
            if len(self._buffer) < self._flush_records and not self._closing:
                # The first record of a batch arrived: give it company for a while.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_seconds):
                        while len(self._buffer) < self._flush_records and not self._closing:
                            await self._wake.wait()
                            self._wake.clear()
            try:
                await self._write_batch()
                backoff = 0.0
                failed = 0
            except Exception as exc:
                self.failures += 1
                failed += 1
                backoff = min(_MAX_BACKOFF, max(0.5, backoff * 2))
                log.warning(
                    "usage store write failed (%s: %s); %d records kept, retrying in %gs",
                    type(exc).__name__,
                    exc,
                    len(self._buffer),
                    backoff,
                )
                if self._closing and failed >= 3:
                    log.error("usage store: %d records not written at shutdown", len(self._buffer))
                    return
                await asyncio.sleep(backoff)

    async def _write_batch(self) -> None:
        batch = self._buffer[: self._flush_records]
        self._writing = batch
        del self._buffer[: len(batch)]
        try:
            await self.store.write(batch)
        except BaseException:
            self._buffer[0:0] = batch  # first in line again; record_id makes a rewrite safe
            raise
        finally:
            self._writing = ()
        self.written += len(batch)
        self.batches += 1
        if self._on_flushed is not None:
            self._on_flushed(batch)
