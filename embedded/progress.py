"""Visible progress while the model loads (seconds here, minutes on a Pi).

On a terminal: one live line (spinner, what llama.cpp is doing, seconds so
far) that log lines push aside cleanly. Elsewhere (systemd, Docker, a file):
a log line every ``LOG_EVERY`` seconds, so a slow start never looks hung.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TextIO

from .supervisor import SERVING, LlamaServer, State

log = logging.getLogger("fognode.embedded")

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
LOG_EVERY = 10.0
FRAME = 0.1


class _ClearLine(logging.Filter):
    """Wipes the live line before a log record is written to the same terminal."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def filter(self, record: logging.LogRecord) -> bool:
        self.stream.write("\r\033[K")
        return True


def _status(server: LlamaServer) -> str:
    if server.state in SERVING:
        return "ready"
    if server.state is State.RESTARTING:
        return f"restarting after a crash ({server.restarts})"
    return server.phase or "starting"


async def show_startup(server: LlamaServer, alias: str, stream: TextIO | None = None) -> None:
    """Until the engine serves (or this task is cancelled)."""
    out = stream or sys.stderr
    started = time.monotonic()
    if not out.isatty():
        while server.state not in SERVING:
            await asyncio.sleep(LOG_EVERY)
            if server.state not in SERVING:
                log.info(
                    "still loading the embedded model %s: %s (%.0fs so far)",
                    alias,
                    _status(server),
                    time.monotonic() - started,
                )
        return
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is out
    ]
    clear = _ClearLine(out)
    for handler in handlers:
        handler.addFilter(clear)
    frame = 0
    try:
        while server.state not in SERVING:
            elapsed = time.monotonic() - started
            out.write(
                f"\r\033[K{SPINNER[frame % len(SPINNER)]} Loading {alias} with llama.cpp: "
                f"{_status(server)} ({elapsed:.0f}s)"
            )
            out.flush()
            frame += 1
            await asyncio.sleep(FRAME)
    finally:
        out.write("\r\033[K")
        out.flush()
        for handler in handlers:
            handler.removeFilter(clear)
