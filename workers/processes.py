"""Worker processes, kept running like a service manager would.

Each worker is a fresh interpreter (``python -m ...``), not a fork: the
supervisor has threads (the certificate check, zeroconf), and forking a
process with threads is unsafe. A worker gets what it needs at start as
inherited descriptors (its end of the channel, its listening sockets) and
bytes on its stdin, and runs in a session of its own, so a Ctrl-C on the
terminal reaches the supervisor only, which then stops the workers in
order. (A worker makes itself die with the supervisor, PR_SET_PDEATHSIG,
so a supervisor killed with SIGKILL leaves none behind.)

Life cycle of one worker:

* starting: spawned; serving once it says so (``ready`` resolves); a worker
  that exits before that, the first time, fails the start of the whole
  node (a configuration it refuses stops everything, with its reason);
* serving: an exit not asked for is logged with the exit status and
  counted, and the worker is started again after the backoff of its
  restart policy (supervision/restart.py: doubling up to a cap, started
  over after a stable run);
* stopped: SIGTERM, then ``timeout`` seconds to drain, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..supervision import RestartPolicy, pause

log = logging.getLogger("fognode.workers")


class WorkerStartError(Exception):
    """A worker could not start; the message says why (as the worker put it)."""


# A worker starts in about a second and holds no model: restarts may come sooner
# than an embedded model's (embedded/options.py).
WORKER_RESTARTS = RestartPolicy(delay=0.5, max_delay=30.0, stable_after=30.0)


@dataclass
class Launch:
    """How to start one worker, made afresh for every start."""

    argv: list[str]
    pass_fds: tuple[int, ...]
    stdin: bytes
    # Resolves when the worker serves; raises WorkerStartError when it says it cannot.
    ready: Awaitable[None]
    # The supervisor's copies of what the worker inherited, closed once it has them.
    after_spawn: Callable[[], None]


def exit_note(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class WorkerProcess:
    def __init__(
        self,
        number: int,
        launch: Callable[[int], Awaitable[Launch]],
        policy: RestartPolicy = WORKER_RESTARTS,
    ) -> None:
        self.number = number
        self._launch = launch
        self.policy = policy
        self.restarts = 0
        self.serving = False
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def start(self) -> None:
        """Start it and wait until it serves; then keep it running in the background."""
        started = time.monotonic()
        proc = await self._spawn_and_wait()
        self._task = asyncio.create_task(
            self._supervise(proc, started), name=f"fognode-worker-{self.number}"
        )

    async def _spawn_and_wait(self) -> asyncio.subprocess.Process:
        """One start: spawned, then serving, or WorkerStartError."""
        launch = await self._launch(self.number)
        try:
            proc = self._proc = await asyncio.create_subprocess_exec(
                *launch.argv,
                stdin=asyncio.subprocess.PIPE,
                pass_fds=launch.pass_fds,
                start_new_session=True,
            )
        finally:
            launch.after_spawn()
        assert proc.stdin is not None
        proc.stdin.write(launch.stdin)
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()
        ready = asyncio.ensure_future(launch.ready)
        exited = asyncio.ensure_future(proc.wait())
        try:
            await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not ready.done():
                ready.cancel()
            if not exited.done():
                exited.cancel()
        if ready.done() and not ready.cancelled() and ready.exception() is None:
            self.serving = True
            log.info("worker %d serving (pid %d)", self.number, proc.pid)
            return proc
        # It said why it cannot start, or it exited without a word.
        await self._terminate(proc, grace=5.0)
        if ready.done() and not ready.cancelled() and ready.exception() is not None:
            raise ready.exception()  # type: ignore[misc]
        assert proc.returncode is not None
        raise WorkerStartError(
            f"worker {self.number} {exit_note(proc.returncode)} before it served"
        )

    async def _supervise(self, proc: asyncio.subprocess.Process, started: float) -> None:
        backoff = self.policy.backoff()
        while True:
            code = await proc.wait()
            self.serving = False
            if self._stopping.is_set():
                return
            ran = time.monotonic() - started
            delay = backoff.after_run(ran)
            self.restarts += 1
            log.error(
                "worker %d (pid %d) %s after %.1fs; restart %d in %gs",
                self.number,
                proc.pid,
                exit_note(code),
                ran,
                self.restarts,
                delay,
            )
            while True:
                if await pause(delay, self._stopping):
                    return
                started = time.monotonic()
                try:
                    proc = await self._spawn_and_wait()
                except (WorkerStartError, OSError) as exc:
                    delay = backoff.next()
                    self.restarts += 1
                    log.error(
                        "worker %d did not start again (%s); restart %d in %gs",
                        self.number,
                        exc,
                        self.restarts,
                        delay,
                    )
                    continue
                break

    async def stop(self, grace: float) -> None:
        """SIGTERM, ``grace`` seconds to finish what it serves, then SIGKILL."""
        self._stopping.set()
        if self._task is not None:
            # Whether it waits on the worker or on a backoff, or is starting it again.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._proc is not None:
            await self._terminate(self._proc, grace)
        self.serving = False

    async def _terminate(self, proc: asyncio.subprocess.Process, grace: float) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            log.warning("worker %d did not stop within %gs; killing it", self.number, grace)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
