"""Time to first byte and latency added by fognode, against going direct.

Starts the Ollama stand-in and fognode as separate processes (as they run in
production), then sends the same requests to both over keep-alive
connections, interleaved so that drift on the machine hits both alike. The
result is a ratio and a difference measured in one run, never a threshold.

    .venv/bin/python -m bench.ttfb [--requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiohttp

from bench.common import (
    machine,
    pct,
    start,
    start_fognode,
    start_standin,
    stop,
    wait_ready,
)
from tests.helpers import free_port

CHAT = {
    "model": "llama3.2:1b",
    "messages": [{"role": "user", "content": "Why is the sky blue?"}],
}


async def ttfb_stream(http: aiohttp.ClientSession, base: str) -> tuple[float, float]:
    started = time.perf_counter()
    async with http.post(f"{base}/v1/chat/completions", json=dict(CHAT, stream=True)) as resp:
        await resp.content.readuntil(b"\n\n")
        first = time.perf_counter() - started
        await resp.read()
    return first, time.perf_counter() - started


async def chunk_offsets(http: aiohttp.ClientSession, base: str) -> list[float]:
    """Arrival time of every SSE event, from the moment the request was sent."""
    started = time.perf_counter()
    offsets = []
    async with http.post(f"{base}/v1/chat/completions", json=dict(CHAT, stream=True)) as resp:
        while True:
            event = await resp.content.readuntil(b"\n\n")
            offsets.append(time.perf_counter() - started)
            if event.startswith(b"data: [DONE]") or not event:
                break
    return offsets


async def small_json(http: aiohttp.ClientSession, base: str) -> float:
    started = time.perf_counter()
    async with http.get(f"{base}/api/version") as resp:
        await resp.read()
    return time.perf_counter() - started


async def run(requests: int) -> None:
    upstream_port, gateway_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    gateway = f"http://127.0.0.1:{gateway_port}"
    paced_port, paced_gateway_port = free_port(), free_port()
    paced = f"http://127.0.0.1:{paced_port}"
    paced_gateway = f"http://127.0.0.1:{paced_gateway_port}"
    procs = [
        await start_standin(upstream_port),
        await start_fognode(gateway_port, upstream, "--no-tls", "--auth", "none"),
        await start(
            sys.executable,
            "-m",
            "tests.ollama_standin",
            "--port",
            str(paced_port),
            "--token-delay",
            "0.01",
        ),
        await start_fognode(paced_gateway_port, paced, "--no-tls", "--auth", "none"),
    ]
    try:
        await wait_ready(f"{upstream}/api/version")
        await wait_ready(f"{gateway}/healthz")
        await wait_ready(f"{paced}/api/version")
        await wait_ready(f"{paced_gateway}/healthz")
        results: dict[str, dict[str, list[float]]] = {
            name: {"ttfb": [], "total": [], "json": []} for name in ("direct", "fognode")
        }
        conn = aiohttp.TCPConnector(limit=2)
        async with aiohttp.ClientSession(connector=conn) as http:
            for base in (upstream, gateway):  # warm up both paths and pools
                for _ in range(50):
                    await ttfb_stream(http, base)
                    await small_json(http, base)
            for _ in range(requests):
                for name, base in (("direct", upstream), ("fognode", gateway)):
                    first, total = await ttfb_stream(http, base)
                    results[name]["ttfb"].append(first)
                    results[name]["total"].append(total)
                    results[name]["json"].append(await small_json(http, base))
            # Paced streams (one event every 10 ms): when does event k arrive?
            per_index: dict[str, list[list[float]]] = {"direct": [], "fognode": []}
            for _ in range(max(20, requests // 10)):
                for name, base in (("direct", paced), ("fognode", paced_gateway)):
                    per_index[name].append(await chunk_offsets(http, base))
    finally:
        await stop(*procs)

    print(f"# fognode TTFB bench: {requests} interleaved requests per path, concurrency 1")
    print(f"# {machine()}")
    print()
    print(
        "| metric | direct p50 | fognode p50 | added p50 | direct p99 | fognode p99 | added p99 |"
    )
    print("|---|---|---|---|---|---|---|")
    for key, label in (
        ("ttfb", "stream: time to first SSE event (ms)"),
        ("total", "stream: whole 14-event answer (ms)"),
        ("json", "small JSON GET /api/version (ms)"),
    ):
        d, g = results["direct"][key], results["fognode"][key]
        print(
            f"| {label} | {pct(d, 0.5):.3f} | {pct(g, 0.5):.3f} | {pct(g, 0.5) - pct(d, 0.5):+.3f} "
            f"| {pct(d, 0.99):.3f} | {pct(g, 0.99):.3f} | {pct(g, 0.99) - pct(d, 0.99):+.3f} |"
        )
    events = min(len(o) for o in per_index["direct"] + per_index["fognode"])
    added = [
        statistics.median(o[k] for o in per_index["fognode"])
        - statistics.median(o[k] for o in per_index["direct"])
        for k in range(events)
    ]
    print(f"# added delay by event index (ms): {[round(a * 1000, 2) for a in added]}")
    print(
        f"| paced stream (an event every 10 ms): added delay per event, median over "
        f"{events} events (ms) | | | {statistics.median(added) * 1000:+.3f} | | | "
        f"{max(added) * 1000:+.3f} (max) |"
    )
    d, g = results["direct"]["ttfb"], results["fognode"]["ttfb"]
    print()
    print(f"TTFB ratio fognode/direct (median): {statistics.median(g) / statistics.median(d):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(run(args.requests))


if __name__ == "__main__":
    main()
