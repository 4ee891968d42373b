"""The embedded model: start-up time, tokens per second through fognode, memory.

    .venv/bin/python -m bench.embedded [--rounds 8] [--tokens 64] [--model smollm2:135m]

1. From `fognode serve` (a new process, nothing configured but the embedded
   kind) to the first token of a streamed answer: cold (a fresh data dir;
   for gemma3:270m that includes assembling the model file) and warm (the
   same data dir again), a few times each.
2. Tokens per second of one streamed answer through fognode and direct to
   its llama.cpp child, interleaved (the order alternates each round) after
   a warm-up, same prompt and seed at temperature 0, so both generate the
   same tokens; the decode rate counts from the first token to the last.
3. OpenMP waiting: the same, direct to a child whose threads spin
   (OMP_WAIT_POLICY=ACTIVE) and to one whose threads sleep (fognode's
   default), interleaved. Only meaningful with the machine's load shown.
4. Memory: resident set of the child (from fognode's /metrics) and of
   fognode itself, after the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.common import machine, start, stop
from tests.support.helpers import free_port

PROMPT = "Count from one to one hundred in words, separated by commas."


@dataclass
class Node:
    proc: asyncio.subprocess.Process
    url: str
    child_url: str = ""


async def serve(data_dir: Path, model: str, **env: str) -> tuple[Node, float, float]:
    """Start fognode; return it, seconds to listening and to ready (model loaded)."""
    port = free_port()
    started = time.perf_counter()
    proc = await start(
        sys.executable,
        "-m",
        "fognode.gateway.cli",
        "serve",
        "--no-tls",
        "--auth",
        "none",
        "--port",
        str(port),
        "--log-level",
        "WARNING",
        env={
            "XDG_DATA_HOME": str(data_dir),
            "FOGNODE_UPSTREAM_KIND": "embedded",
            "FOGNODE_EMBEDDED_MODEL": model,
            "FOGNODE_MDNS": "false",
            **env,
        },
    )
    node = Node(proc, f"http://127.0.0.1:{port}")
    listening = 0.0
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.returncode is not None:
                raise RuntimeError("fognode exited")
            try:
                async with http.get(f"{node.url}/readyz") as resp:
                    listening = listening or time.perf_counter() - started
                    if resp.status == 200:
                        node.child_url = (await resp.json())["upstream"]
                        return node, listening, time.perf_counter() - started
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.02)


async def stream(
    http: aiohttp.ClientSession, base: str, model: str, tokens: int
) -> tuple[float, int, float]:
    """Time to first token, tokens, decode tokens/s (first token to last)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "max_tokens": tokens,
        "temperature": 0,
        "seed": 1,
    }
    started = time.perf_counter()
    first = last = 0.0
    count = 0
    async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                count += 1
    rate = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return first - started, count, rate


async def first_answer(node: Node, model: str, started: float) -> float:
    """Seconds from ``started`` to the first token of an answer asked for now."""
    asked = time.perf_counter()
    async with aiohttp.ClientSession() as http:
        ttft, _, _ = await stream(http, node.url, model, 8)
    return asked - started + ttft


async def startup(model: str, repeats: int) -> None:
    print(f"\n## `fognode serve` to the first token ({model})\n")
    print("| start | to listening (s) | to model ready (s) | to first token (s) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="fognode-bench-") as tmp:
        data = Path(tmp)
        for run in range(repeats + 1):
            started = time.perf_counter()
            node, listening, ready = await serve(data, model)
            try:
                answered = await first_answer(node, model, started)
            finally:
                await stop(node.proc)
            kind = "cold (fresh data dir)" if run == 0 else f"warm {run}"
            print(f"| {kind} | {listening:.2f} | {ready:.2f} | {answered:.2f} |", flush=True)


def spread(values: list[float]) -> str:
    return (
        f"{statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f}, "
        f"n={len(values)})"
    )


async def compare(
    model: str, rounds: int, tokens: int, left: tuple[str, str], right: tuple[str, str]
) -> tuple[list[float], list[float], list[float], list[float], int]:
    """Interleaved streams to two base URLs: ttfts and rates for each, and the token count."""
    ttft: dict[str, list[float]] = {left[0]: [], right[0]: []}
    rate: dict[str, list[float]] = {left[0]: [], right[0]: []}
    counts: set[int] = set()
    async with aiohttp.ClientSession() as http:
        for _, base in (left, right):  # warm-up
            await stream(http, base, model, tokens)
        for r in range(rounds):
            for name, base in (left, right) if r % 2 == 0 else (right, left):
                first, count, per_s = await stream(http, base, model, tokens)
                ttft[name].append(first * 1000)
                rate[name].append(per_s)
                counts.add(count)
    return ttft[left[0]], ttft[right[0]], rate[left[0]], rate[right[0]], max(counts)


def rss_of(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


async def throughput(model: str, rounds: int, tokens: int) -> None:
    with tempfile.TemporaryDirectory(prefix="fognode-bench-") as tmp:
        node, _, _ = await serve(Path(tmp), model)
        try:
            t_f, t_d, r_f, r_d, count = await compare(
                model, rounds, tokens, ("fognode", node.url), ("direct", node.child_url)
            )
            print(f"\n## Tokens per second through fognode and direct ({model}, {count} tokens)\n")
            print("| path | decode tokens/s, median (min, max) | time to first token ms |")
            print("|---|---|---|")
            print(f"| direct to the llama.cpp child | {spread(r_d)} | {spread(t_d)} |")
            print(f"| through fognode | {spread(r_f)} | {spread(t_f)} |")
            ratios = [f / d for f, d in zip(r_f, r_d, strict=True) if d]
            print(
                f"\nper-round ratio fognode/direct: median {statistics.median(ratios):.3f} "
                f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
            )
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{node.url}/metrics") as resp,
            ):
                metrics = await resp.text() if resp.status == 200 else ""
            found = re.search(r'fognode_embedded_memory_bytes\{slot="0"\} (\S+)', metrics)
            child_rss = float(found.group(1)) / 2**20 if found else float("nan")
            print(
                f"\nmemory after the runs: llama.cpp child RSS {child_rss:.0f} MiB, "
                f"fognode RSS {rss_of(node.proc.pid):.0f} MiB"
            )
        finally:
            await stop(node.proc)


async def omp_waiting(model: str, rounds: int, tokens: int) -> None:
    load = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(prefix="fognode-bench-") as a,
        tempfile.TemporaryDirectory(prefix="fognode-bench-") as b,
    ):
        passive, _, _ = await serve(Path(a), model)
        spinning, _, _ = await serve(Path(b), model, OMP_WAIT_POLICY="ACTIVE")
        try:
            _, _, r_p, r_s, count = await compare(
                model,
                rounds,
                tokens,
                ("passive", passive.child_url),
                ("active", spinning.child_url),
            )
        finally:
            await stop(passive.proc, spinning.proc)
    print(f"\n## OpenMP threads waiting passive vs spinning ({model}, {count} tokens)\n")
    print(f"load average (1 min) before: {load:.2f}\n")
    print("| OMP_WAIT_POLICY | decode tokens/s, median (min, max) |")
    print("|---|---|")
    print(f"| PASSIVE (fognode's default) | {spread(r_p)} |")
    print(f"| ACTIVE | {spread(r_s)} |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--starts", type=int, default=3, help="warm starts after the cold one")
    parser.add_argument("--skip-omp", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    await startup(args.model, args.starts)
    await throughput(args.model, args.rounds, args.tokens)
    if not args.skip_omp:
        await omp_waiting(args.model, args.rounds, args.tokens)


if __name__ == "__main__":
    asyncio.run(main())
