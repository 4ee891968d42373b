"""The embedded runtime: one llama.cpp server process and its model.

llama.cpp's server decodes its parallel slots together (continuous
batching) over one copy of the model, so several phones are served at once
by one process; the gateway sees one OpenAI-compatible upstream whose slots
it fills through its own admission queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .model import chat_template, model_file
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
        self.server = LlamaServer(options, port=free_loopback_port(), on_ready=self._ready)
        self.model: Path | None = None
        # Called whenever the engine (re)starts serving: the gateway refreshes
        # its model lists and the mDNS record then, instead of minutes later.
        self.on_ready: list[ReadyCallback] = []
        # Called whenever the engine's status changes (see status()).
        self.on_change: list[Callable[[], None]] = []
        self.server.on_change = self._changed
        self._progress: asyncio.Task[None] | None = None

    @property
    def alias(self) -> str:
        return self.options.model_alias

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> None:
        """Find (or assemble) the model file, spawn the engine; does not wait for it."""
        self.model = await asyncio.to_thread(model_file, self.options)
        template = await asyncio.to_thread(chat_template, self.options)
        await self.server.start(self.model, template)
        self._progress = asyncio.create_task(
            show_startup(self.server, self.alias), name="fognode-embedded-progress"
        )

    async def wait_ready(self) -> None:
        await self.server.wait_ready()

    async def stop(self) -> None:
        if self._progress is not None:
            self._progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._progress
        await self.server.stop()

    async def _ready(self) -> None:
        for callback in self.on_ready:
            await callback()

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    def status(self) -> ServerStatus:
        return self.server.status()

    def describe(self) -> dict[str, Any]:
        return describe(self.status())


def describe(status: ServerStatus) -> dict[str, Any]:
    """The engine for /readyz: public, so no paths or process ids."""
    return {
        "model": status.alias,
        "state": status.state.value,
        "restarts": status.restarts,
        "slots": status.slots,
    }
