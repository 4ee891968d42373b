"""The engine process, kept running like a service manager would.

The child is llama.cpp's own HTTP server (xllamacpp) on a loopback port,
started through ``fognode.embedded.child`` so that it dies with fognode. It
runs in its own process group: a Ctrl-C on fognode's terminal reaches
fognode only, which then stops the child in order (after open requests
drained), and a stop signal reaches everything the child may have started.

Life cycle, all on the event loop (asyncio subprocess, no threads):

* starting: spawned; ready once ``/health`` says the model is loaded;
* ready: serving; while it runs, ``/props`` and ``/metrics`` are read every
  ``watch_interval`` seconds (neither wakes a sleeping engine nor resets its
  idle timer; ``/slots`` would) for the slots in use and the token counts;
* asleep: the engine unloaded the model after ``idle_seconds`` without a
  request; the next request wakes it (and waits for the load), so requests
  are still sent;
* restarting: after a crash (any exit not asked for, logged with the child's
  last lines), waiting out the backoff (doubling from ``restart_delay`` up
  to ``restart_max_delay``; a child that ran ``stable_after`` seconds starts
  the doubling over), then starting again;
* stopped: after ``stop()``: SIGTERM to the group, SIGKILL if it lingers.

Requests that arrive while it is starting or restarting are refused by the
gateway with 503 and a Retry-After estimated from how long the model took
to load last time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ..supervision import pause
from .engine import EngineConfig
from .options import EmbeddedOptions

log = logging.getLogger("fognode.embedded")
# Every line the child prints (llama.cpp's own log) at DEBUG:
# FOGNODE_LOG_LEVEL=DEBUG shows them.
child_log = logging.getLogger("fognode.embedded.llama")

LAST_LINES = 40  # kept for the crash report
FIRST_LOAD_GUESS = 10.0  # seconds, for Retry-After before any load was timed
POLL_INTERVAL = 0.2


class State(StrEnum):
    STARTING = "starting"
    READY = "ready"
    ASLEEP = "asleep"
    RESTARTING = "restarting"
    STOPPED = "stopped"


SERVING = frozenset({State.READY, State.ASLEEP})


@dataclass(frozen=True)
class ServerStatus:
    """The engine's state at a moment, enough to answer for it: why it cannot
    serve now and when to retry (the gateway's LocalUpstream protocol).

    A value, so that it can travel: worker processes of the gateway get each
    new one from the supervisor that runs the engine. Times are
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
    slots: int

    def not_ready(self) -> tuple[str, float] | None:
        """Why requests cannot be served now, and in how many seconds to retry.

        An engine asleep serves: the request wakes it and waits for the load.
        """
        now = time.monotonic()
        alias = self.alias
        expected = self.load_seconds or FIRST_LOAD_GUESS
        if self.state in SERVING:
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


@dataclass(frozen=True)
class EngineLoad:
    """What the running engine said at its last look (its /metrics), for
    fognode's /metrics and the status page; counters start over when the
    engine restarts."""

    slots_busy: int = 0  # llamacpp:requests_processing
    deferred: int = 0  # requests waiting inside the engine for a slot
    prompt_tokens: int = 0  # prompt tokens evaluated (cached ones not counted)
    cached_tokens: int = 0  # prompt tokens taken from its caches
    generated_tokens: int = 0

    @classmethod
    def from_metrics(cls, text: str) -> EngineLoad:
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name] = sample.value
        return cls(
            slots_busy=int(values.get("llamacpp:requests_processing", 0)),
            deferred=int(values.get("llamacpp:requests_deferred", 0)),
            prompt_tokens=int(values.get("llamacpp:prompt_tokens_total", 0)),
            cached_tokens=int(values.get("llamacpp:prompt_tokens_cached_total", 0)),
            generated_tokens=int(values.get("llamacpp:tokens_predicted_total", 0)),
        )


class LlamaServer:
    """A supervised llama.cpp server process serving one model on one port."""

    def __init__(
        self,
        options: EmbeddedOptions,
        *,
        port: int,
        on_ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.options = options
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.on_ready = on_ready
        # Called at every change of status (state, restarts): the gateway's
        # supervisor passes each new one on to its worker processes.
        self.on_change: Callable[[], None] | None = None
        self.state = State.STOPPED
        self.restarts = 0
        self.load_seconds: float | None = None  # last successful load
        self.load = EngineLoad()
        self.last_lines: deque[str] = deque(maxlen=LAST_LINES)
        self.phase = ""  # what the loading child said last, for progress
        self._model: Path | None = None
        self._template: str | None = None
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
            slots=self.options.slots,
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
    def config(self, model: Path) -> EngineConfig:
        return EngineConfig.build(self.options, model, self.port, self._template)

    def command(self, model: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "fognode.embedded.child",
            str(os.getpid()),
            self.config(model).to_json(),
        ]

    async def start(self, model: Path, template: str | None = None) -> None:
        """Spawn the child and supervise it in the background (returns at once)."""
        self._model = model
        self._template = template
        self._stopping.clear()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        self._set_state(State.STARTING)
        self._task = asyncio.create_task(self._supervise(), name="fognode-llama")

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
        while self.state not in SERVING:
            if self._task is None or self._task.done():
                raise RuntimeError("the llama.cpp server is not running")
            await asyncio.sleep(POLL_INTERVAL)

    def _set_state(self, state: State) -> None:
        self.state = state
        self._state_since = time.monotonic()
        if self.on_change is not None:
            self.on_change()

    async def _supervise(self) -> None:
        backoff = self.options.restart_policy.backoff()
        while not self._stopping.is_set():
            self._set_state(State.STARTING)
            started = time.monotonic()
            exit_note = await self._run_once(started)
            if self._stopping.is_set():
                break
            ran = time.monotonic() - started
            delay = backoff.after_run(ran)
            self.restarts += 1
            self._restart_at = time.monotonic() + delay
            self._set_state(State.RESTARTING)
            log.error(
                "llama.cpp server (model %s) %s after %.1fs; restart %d in %gs. "
                "Its last lines:\n%s",
                self.options.model_alias,
                exit_note,
                ran,
                self.restarts,
                delay,
                "\n".join(f"  | {line}" for line in self.last_lines) or "  | (nothing)",
            )
            await pause(delay, self._stopping)

    async def _run_once(self, started: float) -> str:
        """Run one child until it exits; say how it ended."""
        assert self._model is not None
        self.last_lines.clear()
        self.phase = "starting"
        self.load = EngineLoad()
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
            "llama.cpp server starting: pid %d, %s, model %s (%s), %d slots, %d threads",
            proc.pid,
            self.url,
            self.options.model_alias,
            self._model,
            self.options.slots,
            self.options.engine_threads,
        )
        watch: asyncio.Task[None] | None = None
        if await self._until_ready(proc, started):
            self.load_seconds = time.monotonic() - started
            self._set_state(State.READY)
            log.info(
                "llama.cpp server ready in %.1fs (pid %d, %s)",
                self.load_seconds,
                proc.pid,
                self.url,
            )
            watch = asyncio.create_task(self._watch(proc), name="fognode-llama-watch")
            if self.on_ready is not None:
                try:
                    await self.on_ready()
                except Exception:
                    log.exception("after the llama.cpp server became ready")
        code = await proc.wait()
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    async def _until_ready(self, proc: asyncio.subprocess.Process, started: float) -> bool:
        """Poll /health until the model is loaded; False if the child died or hung."""
        deadline = started + self.options.start_timeout
        while proc.returncode is None and not self._stopping.is_set():
            if time.monotonic() > deadline:
                self.last_lines.append(
                    f"(fognode: no answer within {self.options.start_timeout:g}s "
                    "(FOGNODE_EMBEDDED_START_TIMEOUT); killing it)"
                )
                self._signal_group(proc, signal.SIGKILL)
                return False
            if await self._healthy():
                return True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL):
                    await proc.wait()
        return False

    async def _healthy(self) -> bool:
        """llama.cpp's /health: 503 while the model loads, 200 once it serves."""
        assert self._http is not None
        try:
            async with self._http.get(f"{self.url}/health") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """While the child serves: asleep or awake, slots busy, tokens."""
        while proc.returncode is None:
            await self.look()
            await asyncio.sleep(self.options.watch_interval)

    async def look(self) -> None:
        """Ask the engine now (/props, /metrics); a failed look changes nothing:
        an exit is noticed by the process wait, not by a missed answer."""
        http = self._http
        if http is None or self.state not in SERVING:
            return
        try:
            async with http.get(f"{self.url}/props") as resp:
                props = await resp.json(content_type=None) if resp.status == 200 else None
            async with http.get(f"{self.url}/metrics") as resp:
                metrics = await resp.text() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return
        if isinstance(props, dict) and self.state in SERVING:
            state = State.ASLEEP if props.get("is_sleeping") is True else State.READY
            if state is not self.state:
                log.info(
                    "the embedded model %s is %s",
                    self.options.model_alias,
                    "asleep (unloaded until the next request)"
                    if state is State.ASLEEP
                    else "awake",
                )
                self._set_state(state)
        if metrics is not None:
            with contextlib.suppress(ValueError):
                self.load = EngineLoad.from_metrics(metrics)

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
            child_log.debug("%s", line)

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
                "llama.cpp server did not stop within %gs; killing it", self.options.stop_timeout
            )
            self._signal_group(proc, signal.SIGKILL)
            await proc.wait()
        log.info("llama.cpp server stopped")

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


# What llama.cpp's server prints while it loads, in the order it prints it.
_PHASES = (
    ("loading model", "reading the model file"),
    ("threadpool init", "loading the weights"),
    ("load_model: initializing", "setting up the slots"),
    ("model loaded", "answering"),
)


def loading_phase(line: str) -> str | None:
    for marker, phase in _PHASES:
        if marker in line:
            return phase
    return None
