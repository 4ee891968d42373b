"""``kill -9`` of a process that is writing usage records, several times over.

After each kill the file must pass SQLite's integrity check, hold every
record whose batch the process acknowledged as flushed, and open again for
the next process to carry on. What is lost is at most what was not yet
acknowledged: the batch in flight and the records still buffered.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from fognode.usage.sqlite_store import SqliteStore

REPO = Path(__file__).resolve().parents[2]
BATCHES_BEFORE_KILL = 40
# After that many batches the kill comes this much later (seconds): spread so
# that it lands at different points of a batch's commit.
KILL_DELAYS = (0.0, 0.0131, 0.0377, 0.071)


async def _run_and_kill(path: Path, round_name: str, delay: float) -> tuple[int, int]:
    """Start the writer, kill it with SIGKILL mid-stream; (acked seq, lines seen)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.usage_writer_process",
        str(path),
        round_name,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stdout is not None
    acked = -1
    batches = 0
    try:
        async with asyncio.timeout(60):
            assert await proc.stdout.readline() == b"open\n"
            while batches < BATCHES_BEFORE_KILL:
                line = await proc.stdout.readline()
                assert line.startswith(b"flushed "), line
                acked = int(line.split()[1])
                batches += 1
            await asyncio.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    # Acknowledgements printed before the kill landed were acknowledged too.
    rest = await proc.stdout.read()
    for line in rest.splitlines():
        if line.startswith(b"flushed "):
            acked = int(line.split()[1])
    assert proc.returncode == -signal.SIGKILL
    return acked, batches


@pytest.mark.slow
async def test_kill_9_loses_at_most_the_unflushed_batch_and_never_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "usage.sqlite3"
    for number, delay in enumerate(KILL_DELAYS):
        round_name = f"r{number}"
        acked, _ = await _run_and_kill(path, round_name, delay)
        assert acked >= 0
        store = SqliteStore(path)
        await store.open()  # recovers the WAL; a restart carries on from here
        try:
            assert await store.integrity_check() == "ok"
            db = store._db(write=False)
            async with db.execute(
                "SELECT request_id FROM usage_records WHERE request_id LIKE ?",
                (f"{round_name}-%",),
            ) as cur:
                stored = {int(row[0].rsplit("-", 1)[1]) for row in await cur.fetchall()}
        finally:
            await store.close()
        missing = set(range(acked + 1)) - stored
        assert not missing, f"round {number}: acknowledged records lost: {sorted(missing)[:10]}"
        # Batches commit in order: what is stored is a prefix, at most a batch past the ack.
        assert stored == set(range(max(stored) + 1))
        print(
            f"round {number}: acknowledged up to {acked}, stored {len(stored)}, "
            f"unacknowledged but stored {max(stored) - acked}"
        )
