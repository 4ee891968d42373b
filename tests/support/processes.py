"""The processes system tests start, and the one way they start `fognode serve`.

`Process` is any program a test starts (a stand-in or a discovery watcher in
a namespace, dbus, avahi): its output goes to a log file, read whole or line
by line as it grows (a pipe nobody reads would stall a chatty process);
`stop()` sends a signal and kills the process if it does not stop in time.

`NodeProcess` is `fognode serve` as an operator runs it, for tests that need
what only a process has: its own descriptor limit, its stderr log as an
operator sees it, its exit status, workers, the llama.cpp children it
starts, or a network namespace of its own. It is configured with FOGNODE_*
variables (and command-line arguments if a test wants them); on this
machine it listens on a free loopback port, in a namespace where the test
says.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

import aiohttp
import httpx

from tests.support.helpers import free_port

if TYPE_CHECKING:
    from tests.support.netns import Host

ROOT = Path(__file__).resolve().parents[2]
FOGNODE = [sys.executable, "-m", "fognode.gateway.cli"]


class Process:
    """A program a test starts; stopped at the end of the test (the `procs`
    fixture) or by the test itself."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        log_file: Path | None = None,
        launch: bool = True,
        clean_env: bool = False,
    ) -> None:
        self.argv = list(argv)
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not (clean_env and k.startswith(("FOGNODE_", "FIREBASE_", "GOOGLE_")))
        }
        self.env = {**inherited, **(env or {})}
        if log_file is None:
            handle, name = tempfile.mkstemp(prefix="fognode-test-", suffix=".log")
            os.close(handle)
            log_file = Path(name)
        self.log_file = log_file
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._read = 0  # how far lines() has read the log
        if launch:
            self.launch()

    def _before_exec(self) -> Callable[[], None] | None:
        return None

    def launch(self) -> None:
        """Start the program (again, after it stopped); its log starts empty."""
        self._close_log()
        self._log = self.log_file.open("wb")
        self._read = 0
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=self._before_exec(),
        )

    @property
    def pid(self) -> int:
        assert self.popen is not None, "not launched"
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def lines(self, until: float) -> Iterator[str]:
        """Output lines as they come, until the deadline (monotonic) or the
        program's end; the next call goes on where this one stopped."""
        buffer = b""
        with self.log_file.open("rb") as log:
            log.seek(self._read)
            while time.monotonic() < until:
                chunk = log.read(65536)
                if not chunk:
                    if not self.alive:
                        break
                    time.sleep(0.02)
                    continue
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self._read += len(line) + 1
                    yield line.decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, limit: float = 20.0) -> int | None:
        """Send ``sig``; kill the program if it has not ended within ``limit``
        seconds. Its exit status (None: never launched). Blocks: from a
        coroutine, `await astop()`."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(limit)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._close_log()
        return self.popen.returncode

    async def astop(self, sig: int = signal.SIGTERM, limit: float = 20.0) -> int | None:
        """`stop()`, off the event loop (the test's stand-in may run on it)."""
        return await asyncio.to_thread(self.stop, sig, limit)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class NodeProcess(Process):
    """One `fognode serve`, configured with FOGNODE_* variables.

    ``settings`` become FOGNODE_<NAME> variables; ``env`` is added last, as
    it is. On this machine (no ``host``) the node gets the test's own
    defaults: a free loopback port, no mDNS, no onboarding page on port 80,
    a short shutdown, its data in ``workdir``. In a namespace (``host``) it
    gets nothing the test does not say (it binds and announces as told by
    ``args`` and ``env``). ``clean_env`` leaves out the FOGNODE_*,
    FIREBASE_* and GOOGLE_* variables of whoever runs the suite; ``nofile``
    is the descriptor limit it starts with; ``ca`` the CA its certificate
    chains to, for clients of the test; ``port`` the port it listens on
    when ``args`` name it (else a free one is chosen).
    """

    def __init__(
        self,
        workdir: Path,
        settings: Mapping[str, str] | None = None,
        *,
        host: Host | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        clean_env: bool = False,
        nofile: tuple[int, int] | None = None,
        ca: Path | None = None,
        port: int | None = None,
    ) -> None:
        if host is None:
            self.port = port or free_port()
            defaults = {
                "XDG_DATA_HOME": str(workdir / "data"),
                "FOGNODE_HOST": "127.0.0.1",
                "FOGNODE_PORT": str(self.port),
                "FOGNODE_MDNS": "false",
                "FOGNODE_SHUTDOWN_TIMEOUT": "1",
                # Not port 80 on the test machine; tests of the page name a port of their own.
                "FOGNODE_ONBOARDING": "false",
            }
            argv = [*FOGNODE, "serve", *args]
        else:
            self.port = port or 0  # in the namespace: what ``args`` or ``env`` say
            defaults = {}
            argv = host.fognode("serve", *args)
        self.host = host
        self.nofile = nofile
        self.ca = ca
        super().__init__(
            argv,
            {
                **defaults,
                **{f"FOGNODE_{k.upper()}": v for k, v in (settings or {}).items()},
                **(env or {}),
            },
            log_file=workdir / "node.log",
            launch=False,
            clean_env=clean_env,
        )

    @property
    def tls(self) -> bool:
        if "--no-tls" in self.argv:
            return False
        return self.env.get("FOGNODE_TLS", "true").lower() != "false"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _before_exec(self) -> Callable[[], None] | None:
        nofile = self.nofile
        if nofile is None:
            return None

        def apply() -> None:  # runs in the child, before exec
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        return apply

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """Launch it and wait until every process serves (/healthz on this
        machine's loopback); stopped again if it does not."""
        try:
            self.launch()
            await self._serving(ssl_context)
        except BaseException:
            await self.astop()
            raise

    async def _serving(self, ssl_context: ssl.SSLContext | None) -> None:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                if not self.alive:
                    raise AssertionError(f"fognode exited at start:\n{self.log()}")
                try:
                    async with http.get(f"{self.url}/healthz", ssl=ssl_context or False) as resp:
                        if resp.status == 200 and self.listening():
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"fognode did not answer /healthz:\n{self.log()}")

    def listening(self) -> bool:
        """Every process serves: with workers the first one answers /healthz
        before the others listen; the main process logs once all of them do."""
        if self.env.get("FOGNODE_LOG_LEVEL", "INFO").upper() not in ("DEBUG", "INFO"):
            return True
        return "fognode listening on" in self.log()

    def readyz(self) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5, verify=False)
        except httpx.TransportError:
            return None

    def wait_ready(self, limit: float = 120.0) -> dict[str, object]:
        """Block until /readyz says ready (an embedded model loads for a while): its body."""
        deadline = time.monotonic() + limit
        while True:
            if not self.alive:
                raise AssertionError(f"fognode exited:\n{self.log()[-3000:]}")
            resp = self.readyz()
            if resp is not None and resp.status_code == 200:
                body: dict[str, object] = resp.json()
                return body
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for: fognode and its model to be ready")
            time.sleep(0.05)
