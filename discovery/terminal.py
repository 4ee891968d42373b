"""How discovered nodes look on a terminal: a table, JSON, and a progress line.

Kept apart from the commands so that the discovery library has no terminal
in it and other client commands (`fognode chat`) show nodes the same way.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import asdict
from typing import Any, TextIO

from .browser import FogNode


def node_dict(node: FogNode) -> dict[str, Any]:
    txt = asdict(node.txt)
    txt["models"] = list(node.txt.models)
    txt["hot"] = list(node.txt.hot) if node.txt.hot is not None else None
    return {
        "name": node.instance,
        "service_type": node.service_type,
        "host": node.host_name,
        "domains": list(node.domains),
        "addresses": list(node.addresses),
        "port": node.port,
        "url": node.url(),
        "txt": txt,
    }


def row(node: FogNode) -> list[str]:
    txt = node.txt
    return [
        node.instance,
        f"{node.preferred_address()}:{node.port}",
        _names(txt.models, txt.model_count),
        _names(txt.hot, txt.hot_count) if txt.hot is not None else "?",
        f"{txt.load_active}/{txt.load_capacity}" if txt.load_capacity else "-",
        txt.auth or "-",
        txt.ca_sha256[:16] or "-",
        txt.version or "-",
    ]


def _names(names: tuple[str, ...], total: int) -> str:
    shown = ",".join(names) or "-"
    return shown + (f" (+{total - len(names)})" if total > len(names) else "")


# HOT: the models loaded in memory now ("?": the node does not say).
HEADER = ["NAME", "ADDRESS", "MODELS", "HOT", "LOAD", "AUTH", "CA SHA-256", "VERSION"]


def print_table(
    nodes: list[FogNode], out: TextIO = sys.stdout, *, fog: list[str] | None = None
) -> None:
    """``fog``: what each node is to this machine's fog (a column of its own)."""
    header = [*HEADER, "FOG"] if fog is not None else HEADER
    rows = [header, *(row(n) + ([fog[i]] if fog is not None else []) for i, n in enumerate(nodes))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for cells in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip())
        out.write("\n")


class Progress:
    """A spinner on a terminal, one line otherwise; always on stderr."""

    def __init__(self, what: str, seconds: float) -> None:
        self.what, self.seconds = what, seconds
        self._task: asyncio.Task[None] | None = None

    async def _spin(self) -> None:
        frames = "|/-\\"
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        while True:
            elapsed = loop.time() - start
            sys.stderr.write(f"\r{frames[i % 4]} {self.what} {elapsed:4.1f}/{self.seconds:g}s")
            sys.stderr.flush()
            i += 1
            await asyncio.sleep(0.1)

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            self._task = asyncio.ensure_future(self._spin())
        else:
            sys.stderr.write(f"{self.what} (up to {self.seconds:g}s)...\n")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            sys.stderr.write("\r\033[K")
