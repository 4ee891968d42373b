"""`fognode serve` as a real process, for tests that need what only a process
has: its own descriptor limit, its stderr log as an operator sees it, and
the question whether it is still alive afterwards."""

from __future__ import annotations

import asyncio
import os
import resource
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.support.helpers import free_port

FOGNODE = [sys.executable, "-m", "fognode.gateway.cli", "serve"]


class NodeProcess:
    """One `fognode serve`, configured with FOGNODE_* variables."""

    def __init__(
        self,
        workdir: Path,
        settings: dict[str, str],
        *,
        nofile: tuple[int, int] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.log_file = workdir / "node.log"
        self.env = {
            **os.environ,
            "XDG_DATA_HOME": str(workdir / "data"),
            "FOGNODE_HOST": "127.0.0.1",
            "FOGNODE_PORT": str(self.port),
            "FOGNODE_MDNS": "false",
            "FOGNODE_SHUTDOWN_TIMEOUT": "1",
            # Not port 80 on the test machine; tests of the page name a port of their own.
            "FOGNODE_ONBOARDING": "false",
            **{f"FOGNODE_{k.upper()}": v for k, v in settings.items()},
            **(extra_env or {}),
        }
        self.nofile = nofile
        self.tls = settings.get("tls", "true") != "false"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _limit(self) -> Callable[[], None] | None:
        nofile = self.nofile
        if nofile is None:
            return None

        def apply() -> None:  # runs in the child, before exec
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        return apply

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        try:
            await self._start(ssl_context)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, ssl_context: ssl.SSLContext | None) -> None:
        with self.log_file.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *FOGNODE,
                env=self.env,
                stdout=log,
                stderr=log,
                preexec_fn=self._limit(),
            )
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                if self.proc.returncode is not None:
                    raise AssertionError(f"fognode exited at start:\n{self.log()}")
                try:
                    async with http.get(f"{self.url}/healthz", ssl=ssl_context or False) as resp:
                        if resp.status == 200 and self.started():
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"fognode did not answer /healthz:\n{self.log()}")

    def started(self) -> bool:
        """Every process serves: with workers the first one answers /healthz
        before the others listen; the main process logs once all of them do."""
        if self.env.get("FOGNODE_LOG_LEVEL", "INFO").upper() not in ("DEBUG", "INFO"):
            return True
        return "fognode listening on" in self.log()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(15):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode
