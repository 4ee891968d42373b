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
from collections.abc import Sequence
from typing import TextIO

from .supervisor import LlamaServer, State

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


def _status(servers: Sequence[LlamaServer]) -> str:
    loading = [s for s in servers if s.state is not State.READY]
    if not loading:
        return "ready"
    first = loading[0]
    what = first.phase or "starting"
    if first.state is State.RESTARTING:
        what = f"restarting after a crash ({first.restarts})"
    if len(servers) > 1:
        what += f"; {len(servers) - len(loading)} of {len(servers)} ready"
    return what


async def show_startup(
    servers: Sequence[LlamaServer], alias: str, stream: TextIO | None = None
) -> None:
    """Until every server is ready (or this task is cancelled)."""
    out = stream or sys.stderr
    started = time.monotonic()
    if not out.isatty():
        while any(s.state is not State.READY for s in servers):
            await asyncio.sleep(LOG_EVERY)
            if any(s.state is not State.READY for s in servers):
                log.info(
                    "still loading the embedded model %s: %s (%.0fs so far)",
                    alias,
                    _status(servers),
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
        while any(s.state is not State.READY for s in servers):
            elapsed = time.monotonic() - started
            out.write(
                f"\r\033[K{SPINNER[frame % len(SPINNER)]} Loading {alias} with llama.cpp: "
                f"{_status(servers)} ({elapsed:.0f}s)"
            )
            out.flush()
            frame += 1
            await asyncio.sleep(FRAME)
    finally:
        out.write("\r\033[K")
        out.flush()
        for handler in handlers:
            handler.removeFilter(clear)
