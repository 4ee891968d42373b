"""A process that records usage without pause, for the kill -9 test.

    python -m tests.support.usage_writer_process PATH ROUND

It opens the SQLite store at PATH (recovering it if a previous process was
killed), then adds records ``ROUND-0``, ``ROUND-1``, ... as fast as the
batch writer takes them, and prints ``flushed N`` after each batch commits,
N being the highest sequence number in that batch. Whatever it printed is
acknowledged as stored; it runs until it is killed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fognode.usage.options import StoreOptions
from fognode.usage.record import Outcome, UsageRecord
from fognode.usage.sqlite_store import SqliteStore
from fognode.usage.writer import BatchWriter


async def main(path: Path, round_name: str) -> None:
    store = SqliteStore(path)
    await store.open()
    print("open", flush=True)

    def acknowledge(batch: Sequence[UsageRecord]) -> None:
        last = max(int(r.request_id.rsplit("-", 1)[1]) for r in batch)
        print(f"flushed {last}", flush=True)

    options = StoreOptions(sqlite_path=path, flush_records=25, flush_seconds=0.01)
    writer = BatchWriter(store, options, on_flushed=acknowledge)
    writer.start()
    seq = 0
    while True:
        now = time.time()
        writer.add(
            UsageRecord(
                uid=f"user-{seq % 7}",
                model="m",
                upstream="u",
                route="/v1/chat/completions",
                started_at=now,
                ended_at=now,
                prompt_tokens=3,
                completion_tokens=4,
                outcome=Outcome.COMPLETED,
                partial=False,
                request_id=f"{round_name}-{seq}",
            )
        )
        seq += 1
        # As fast as the store takes them, without filling the buffer (which
        # would drop records, as a node under more load than its disk would).
        await asyncio.sleep(0.001 if len(writer.pending()) >= 100 else 0)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
