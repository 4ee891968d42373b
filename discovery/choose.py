"""Pick a node: by requested model, then where it is loaded, then by load,
then by measured round trip.

TXT records say what a node serves, which models it has in memory (``hot``)
and how busy it is; the round trip of `GET /healthz` says how far away it
is. A model that is not loaded costs seconds to minutes before its first
token, more than any difference in load or distance on a LAN, hence the
order. `random` mimics the reference client, which took whichever node
answered.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from .browser import SERVICE_NAME, FogNode


@dataclass(frozen=True)
class Ranked:
    node: FogNode
    has_model: bool | None
    hot: bool | None  # the model is loaded there (None: the node does not say)
    load: float
    rtt_ms: float | None


async def healthz_rtt(
    node: FogNode,
    *,
    ssl_context: ssl.SSLContext | bool,
    limit: float = 2.0,
    name: str = SERVICE_NAME,
) -> float | None:
    """Round trip of GET /healthz in milliseconds, or None if unreachable."""
    connector = aiohttp.TCPConnector(ssl=ssl_context, force_close=True)
    try:
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=limit)
        ) as http:
            started = time.perf_counter()
            async with http.get(
                f"{node.url()}/healthz",
                headers={"Host": name},
                server_hostname=name if node.tls else None,
            ) as resp:
                await resp.read()
                if resp.status != 200:
                    return None
            return (time.perf_counter() - started) * 1000
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


async def rank(
    nodes: Sequence[FogNode],
    *,
    model: str | None = None,
    ssl_context: ssl.SSLContext | bool = True,
    measure: bool = True,
    name: str = SERVICE_NAME,
) -> list[Ranked]:
    rtts = (
        await asyncio.gather(*(healthz_rtt(n, ssl_context=ssl_context, name=name) for n in nodes))
        if measure
        else [None] * len(nodes)
    )
    ranked = [
        Ranked(
            n,
            n.txt.has_model(model) if model else True,
            n.txt.is_hot(model) if model else None,
            n.txt.load_ratio,
            rtt,
        )
        for n, rtt in zip(nodes, rtts, strict=True)
    ]
    known = {True: 0, None: 1, False: 2}  # yes, cannot tell, no

    def key(r: Ranked) -> tuple[int, int, float, float]:
        return (
            known[r.has_model],
            known[r.hot],
            r.load,
            r.rtt_ms if r.rtt_ms is not None else float("inf"),
        )

    return sorted(ranked, key=key)


def pick_random(nodes: Sequence[FogNode]) -> FogNode:
    return random.choice(list(nodes))
