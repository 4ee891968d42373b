"""The embedded runtime: one llama.cpp server per parallel slot, and their model.

llama-cpp-python's server answers one request at a time, so parallel slots
are separate processes, each on its own loopback port (the model file is
memory-mapped, so they share its pages). The gateway routes to the least
busy one like any set of upstreams.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .model import model_file
from .options import EmbeddedOptions
from .progress import show_startup
from .supervisor import LlamaServer, ServerStatus

ReadyCallback = Callable[[], Awaitable[None]]


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRuntime:
    def __init__(self, options: EmbeddedOptions) -> None:
        self.options = options
        self.servers = [
            LlamaServer(options, port=free_loopback_port(), slot=slot, on_ready=self._ready)
            for slot in range(options.parallel)
        ]
        self.model: Path | None = None
        # Called whenever a server (re)starts serving: the gateway refreshes
        # its model lists and the mDNS record then, instead of minutes later.
        self.on_ready: list[ReadyCallback] = []
        # Called whenever a server's status changes (see statuses()).
        self.on_change: list[Callable[[], None]] = []
        for server in self.servers:
            server.on_change = self._changed
        self._progress: asyncio.Task[None] | None = None

    @property
    def alias(self) -> str:
        return self.options.model_alias

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def server_at(self, url: str) -> LlamaServer | None:
        return next((s for s in self.servers if s.url == url.rstrip("/")), None)

    async def start(self) -> None:
        """Find (or assemble) the model file, spawn the servers; does not wait for them."""
        self.model = await asyncio.to_thread(model_file, self.options)
        for server in self.servers:
            await server.start(self.model)
        self._progress = asyncio.create_task(
            show_startup(self.servers, self.alias), name="fognode-embedded-progress"
        )

    async def wait_ready(self) -> None:
        await asyncio.gather(*(s.wait_ready() for s in self.servers))

    async def stop(self) -> None:
        if self._progress is not None:
            self._progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._progress
        await asyncio.gather(*(s.stop() for s in self.servers))

    async def _ready(self) -> None:
        for callback in self.on_ready:
            await callback()

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    def statuses(self) -> list[ServerStatus]:
        return [s.status() for s in self.servers]

    def describe(self) -> dict[str, Any]:
        return describe(self.alias, self.statuses())


def describe(alias: str, statuses: list[ServerStatus]) -> dict[str, Any]:
    """The runtime for /readyz: public, so no paths or process ids."""
    return {
        "model": alias,
        "slots": [{"state": s.state.value, "restarts": s.restarts} for s in statuses],
    }
