"""One llama.cpp server child, kept running like a service manager would.

The child is llama-cpp-python's OpenAI-compatible server on a loopback
port, started through ``fognode.embedded.child`` so that it dies with
fognode. It runs in its own process group: a Ctrl-C on fognode's terminal
reaches fognode only, which then stops the child in order (after open
requests drained), and a stop signal reaches everything the child may have
started.

Life cycle, all on the event loop (asyncio subprocess, no threads):

* starting: spawned; ready once ``/v1/models`` answers with our model;
* ready: serving; a crash (any exit not asked for) is logged with the
  child's last lines and counted;
* restarting: waiting out the backoff (doubling from ``restart_delay`` up to
  ``restart_max_delay``; a child that ran ``stable_after`` seconds starts the
  doubling over), then starting again;
* stopped: after ``stop()``: SIGTERM to the group, SIGKILL if it lingers.

Requests that arrive while not ready are refused by the gateway with 503 and
a Retry-After estimated from how long the model took to load last time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp

from .options import EmbeddedOptions

log = logging.getLogger("fognode.embedded")
# Every line the child prints (llama.cpp's own log, uvicorn's access log) at
# DEBUG: FOGNODE_LOG_LEVEL=DEBUG shows them.
child_log = logging.getLogger("fognode.embedded.llama")

LAST_LINES = 40  # kept for the crash report
FIRST_LOAD_GUESS = 10.0  # seconds, for Retry-After before any load was timed
POLL_INTERVAL = 0.2


class State(StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ServerStatus:
    """One server's state at a moment, enough to answer for it: why it cannot
    serve now and when to retry (the gateway's LocalUpstream protocol).

    A value, so that it can travel: worker processes of the gateway get each
    new one from the supervisor that runs the server. Times are
    ``time.monotonic()`` readings, CLOCK_MONOTONIC, which on Linux is one
    clock for every process of the machine.
    """

    url: str
    alias: str
    state: State
    since: float  # when the state began
    restart_at: float  # when a restart begins (RESTARTING)
    load_seconds: float | None  # the last successful load
    restart_delay: float
    restarts: int

    def not_ready(self) -> tuple[str, float] | None:
        """Why requests cannot be served now, and in how many seconds to retry."""
        now = time.monotonic()
        alias = self.alias
        expected = self.load_seconds or FIRST_LOAD_GUESS
        if self.state is State.READY:
            return None
        if self.state is State.STARTING:
            elapsed = now - self.since
            return (
                f"The embedded model {alias} is still loading ({elapsed:.0f}s so far); "
                "retry shortly.",
                max(1.0, expected - elapsed),
            )
        if self.state is State.RESTARTING:
            wait = max(0.0, self.restart_at - now)
            return (
                f"The embedded model {alias} stopped unexpectedly and is restarted in "
                f"{math.ceil(wait)}s; retry shortly.",
                wait + expected,
            )
        return (f"The embedded model {alias} is not running (fognode is stopping).", expected)

    def crashed(self) -> tuple[str, float]:
        """For a request that found the port closed before the exit was noticed."""
        return self.not_ready() or (
            f"The embedded model {self.alias} stopped unexpectedly and is "
            "being restarted; retry shortly.",
            self.restart_delay + (self.load_seconds or FIRST_LOAD_GUESS),
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state.value}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerStatus:
        return cls(**{**data, "state": State(data["state"])})


class LlamaServer:
    """A supervised ``llama_cpp.server`` process serving one model on one port."""

    def __init__(
        self,
        options: EmbeddedOptions,
        *,
        port: int,
        slot: int = 0,
        on_ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.options = options
        self.port = port
        self.slot = slot
        self.url = f"http://127.0.0.1:{port}"
        self.on_ready = on_ready
        # Called at every change of status (state, restarts): the gateway's
        # supervisor passes each new one on to its worker processes.
        self.on_change: Callable[[], None] | None = None
        self.state = State.STOPPED
        self.restarts = 0
        self.load_seconds: float | None = None  # last successful load
        self.last_lines: deque[str] = deque(maxlen=LAST_LINES)
        self.phase = ""  # what the loading child said last, for progress
        self._model: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._state_since = 0.0
        self._restart_at = 0.0
        self._http: aiohttp.ClientSession | None = None

    # --- what the gateway asks ------------------------------------------------
    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def status(self) -> ServerStatus:
        return ServerStatus(
            url=self.url,
            alias=self.options.model_alias,
            state=self.state,
            since=self._state_since,
            restart_at=self._restart_at,
            load_seconds=self.load_seconds,
            restart_delay=self.options.restart_delay,
            restarts=self.restarts,
        )

    def not_ready(self) -> tuple[str, float] | None:
        return self.status().not_ready()

    def crashed(self) -> tuple[str, float]:
        return self.status().crashed()

    def rss_bytes(self) -> int | None:
        """Resident memory of the child, from /proc (Linux)."""
        pid = self.pid
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
        return None

    # --- life cycle -------------------------------------------------------------
    def command(self, model: Path) -> list[str]:
        o = self.options
        config = {
            "server": {
                "host": "127.0.0.1",
                "port": self.port,
                # One request at a time per process; fognode queues the rest. By
                # default a waiting request would cut the running stream short.
                "interrupt_requests": False,
                # sse-starlette's ": ping" comments end with a blank line, which
                # the SpeziLLMFog app reads as an empty event and stops at.
                "disable_ping_events": True,
            },
            "model": {
                "model": str(model),
                "model_alias": o.model_alias,
                "chat_format": o.effective_chat_format,
                "n_ctx": o.context_size,
                "n_threads": o.threads_per_process,
                "n_threads_batch": o.threads_per_process,
            },
        }
        return [
            sys.executable,
            "-m",
            "fognode.embedded.child",
            str(os.getpid()),
            json.dumps(config),
        ]

    async def start(self, model: Path) -> None:
        """Spawn the child and supervise it in the background (returns at once)."""
        self._model = model
        self._stopping.clear()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        self._set_state(State.STARTING)
        self._task = asyncio.create_task(self._supervise(), name=f"fognode-llama-{self.slot}")

    async def stop(self) -> None:
        self._stopping.set()
        await self._terminate()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._set_state(State.STOPPED)

    async def wait_ready(self) -> None:
        """Until the child serves (for callers that want to block on it)."""
        while self.state is not State.READY:
            if self._task is None or self._task.done():
                raise RuntimeError("the llama.cpp server is not running")
            await asyncio.sleep(POLL_INTERVAL)

    def _set_state(self, state: State) -> None:
        self.state = state
        self._state_since = time.monotonic()
        if self.on_change is not None:
            self.on_change()

    async def _supervise(self) -> None:
        delay = self.options.restart_delay
        while not self._stopping.is_set():
            self._set_state(State.STARTING)
            started = time.monotonic()
            exit_note = await self._run_once(started)
            if self._stopping.is_set():
                break
            ran = time.monotonic() - started
            if ran >= self.options.stable_after:
                delay = self.options.restart_delay
            self.restarts += 1
            self._restart_at = time.monotonic() + delay
            self._set_state(State.RESTARTING)
            log.error(
                "llama.cpp server %d (model %s) %s after %.1fs; restart %d in %gs. "
                "Its last lines:\n%s",
                self.slot,
                self.options.model_alias,
                exit_note,
                ran,
                self.restarts,
                delay,
                "\n".join(f"  | {line}" for line in self.last_lines) or "  | (nothing)",
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            delay = min(delay * 2, self.options.restart_max_delay)

    async def _run_once(self, started: float) -> str:
        """Run one child until it exits; say how it ended."""
        assert self._model is not None
        self.last_lines.clear()
        self.phase = "starting"
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(self._model),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group
                env=child_environment(),
                limit=1 << 20,
            )
        except OSError as exc:
            return f"could not be started ({exc})"
        proc = self._proc
        self._reader = asyncio.create_task(self._read_output(proc), name="fognode-llama-output")
        log.info(
            "llama.cpp server %d starting: pid %d, %s, model %s (%s)",
            self.slot,
            proc.pid,
            self.url,
            self.options.model_alias,
            self._model,
        )
        if await self._until_ready(proc, started):
            self.load_seconds = time.monotonic() - started
            self._set_state(State.READY)
            log.info(
                "llama.cpp server %d ready in %.1fs (pid %d, %s)",
                self.slot,
                self.load_seconds,
                proc.pid,
                self.url,
            )
            if self.on_ready is not None:
                try:
                    await self.on_ready()
                except Exception:
                    log.exception("after the llama.cpp server became ready")
        code = await proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    async def _until_ready(self, proc: asyncio.subprocess.Process, started: float) -> bool:
        """Poll /v1/models until it lists our model; False if the child died or hung."""
        deadline = started + self.options.start_timeout
        while proc.returncode is None and not self._stopping.is_set():
            if time.monotonic() > deadline:
                self.last_lines.append(
                    f"(fognode: no answer within {self.options.start_timeout:g}s "
                    "(FOGNODE_EMBEDDED_START_TIMEOUT); killing it)"
                )
                self._signal_group(proc, signal.SIGKILL)
                return False
            if await self._answers():
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await proc.wait()
        return False

    async def _answers(self) -> bool:
        assert self._http is not None
        try:
            async with self._http.get(f"{self.url}/v1/models") as resp:
                if resp.status != 200:
                    return False
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
        entries = body.get("data") if isinstance(body, dict) else None
        ids = {e.get("id") for e in entries or [] if isinstance(e, dict)}
        return self.options.model_alias in ids

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        stream = proc.stdout
        assert stream is not None
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the buffer: take what is there
                raw = await stream.read(1 << 20)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            self.last_lines.append(line)
            if self.state is State.STARTING:
                self.phase = loading_phase(line) or self.phase
            child_log.debug("[%d] %s", self.slot, line)

    async def _terminate(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        self._signal_group(proc, signal.SIGTERM)
        try:
            async with asyncio.timeout(self.options.stop_timeout):
                await proc.wait()
        except TimeoutError:
            log.warning(
                "llama.cpp server %d did not stop within %gs; killing it",
                self.slot,
                self.options.stop_timeout,
            )
            self._signal_group(proc, signal.SIGKILL)
            await proc.wait()
        log.info("llama.cpp server %d stopped", self.slot)

    @staticmethod
    def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        # The child leads its own group (start_new_session): its pid is the group id.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # its log lines as they happen (crash reports)
    # llama.cpp's OpenMP threads spin while they wait for each other. On a
    # machine that also runs fognode (and anything else) a spinning thread
    # keeps a descheduled one from its work: measured here on 2 busy cores,
    # 2 threads gave 0.8-1.4 tokens/s spinning and 20 passive (bench/README.md).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


# What llama.cpp and uvicorn print while loading, in the order they print it.
_PHASES = (
    ("llama_model_loader", "reading the model file"),
    ("load_tensors", "loading the weights"),
    ("llama_context", "setting up the context"),
    ("llama_kv_cache", "allocating the KV cache"),
    ("Started server process", "starting the HTTP server"),
    ("Uvicorn running", "answering"),
)


def loading_phase(line: str) -> str | None:
    for marker, phase in _PHASES:
        if marker in line:
            return phase
    return None
