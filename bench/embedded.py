"""The embedded engine: llama.cpp's own server (xllamacpp) against the
llama-cpp-python setup fognode had, phones at once, memory, threads, workers.

    .venv/bin/python -m bench.embedded [--rounds 5] [--tokens 128] [--sections ...]

Every target is a `fognode serve` (one worker, no auth, the same gateway
code) in front of an engine; only the engine differs:

* ``new-N``: the embedded model as fognode runs it now: llama.cpp's server,
  N slots in one process sharing one model (continuous batching);
* ``old-PxT``: today's setup before this change: P processes of
  llama-cpp-python's server (bench/old_engine.py, as fognode's child ran
  it), T threads each, one request at a time per process, fognode queueing
  the rest (``FOGNODE_EMBEDDED_PARALLEL=P`` made exactly this). The bench
  installs llama-cpp-python[server] into its own venv in
  ~/.cache/fognode/bench from the wheel setup.sh used to build
  (~/.cache/fognode/wheels; built there first if missing: minutes).

Sections (``--sections``, default all):

* ``phones``: SmolLM2 135M; in each round every target serves 1 phone (decode
  tokens/s), 4 phones and 8 phones at once (each phone its own prompt, the
  same per target; worst and median time to first token, total tokens/s:
  all tokens over the wall time from the first request to the last token);
  then the engine's memory (PSS: shared model pages counted once).
* ``gemma``: one phone on Gemma 3 270M (K-quants): the new wheel (AVX2) and
  the old build (compiled here: AVX-512).
* ``threads``: the new engine with 1 thread and with one per core, 1 and 4
  phones, SmolLM2 and Gemma.
* ``workers``: the new engine behind 1 gateway worker and behind one per
  core: 4 phones, and the gateway's memory at rest.
* ``affinity``: multi-turn conversations (more than slots), turns
  interleaved: time to first token of later turns with the engine choosing
  the slot (longest common prefix, host-RAM prompt cache), with each
  conversation pinned to a slot (``id_slot``), and with no prompt cache.
* ``native`` (with ``--native-python``): the same xllamacpp version as the
  wheel, built on this machine (all its CPU features, AVX-512 here), against
  the wheel (AVX2): the engines alone, no gateway, 1 and 4 phones, SmolLM2
  (Q4_1) and Gemma (K-quants). The interpreter given must have that build
  and fognode (``pip install --no-deps -e .``: the child needs nothing else).

Rounds are interleaved (the target order rotates each round) after a
warm-up per target; tables give the median over rounds with min-max, and
ratios per round. The load average is printed: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import machine, start, stop
from fognode.embedded.engine import EngineConfig
from fognode.embedded.model import chat_template, model_file
from fognode.embedded.options import EmbeddedOptions, cores, default_threads
from tests.support.helpers import free_port

OLD_VERSION = "0.3.36"
OLD = f"llama-cpp-python=={OLD_VERSION}"
OLD_SERVER = f"llama-cpp-python[server]=={OLD_VERSION}"
OLD_VENV = Path.home() / ".cache/fognode/bench" / f"llama-cpp-python-{OLD_VERSION}"
WHEELS = Path.home() / ".cache/fognode/wheels"
OLD_ENGINE = Path(__file__).resolve().parent / "old_engine.py"
CONTEXT = 4096
PROMPT = "Phone {phone}, round {round}: count from one to five hundred in words, with commas."


# --- the old engine's venv ------------------------------------------------------------


def old_python() -> Path:
    """The scratch venv's interpreter, with llama-cpp-python[server] in it."""
    python = OLD_VENV / "bin/python"
    if python.exists():
        return python
    print(f"setting up llama-cpp-python {OLD_VERSION} in {OLD_VENV} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(OLD_VENV)], check=True)
    if not list(WHEELS.glob(f"llama_cpp_python-{OLD_VERSION}-*.whl")):
        print("building its wheel (a llama.cpp compile: minutes) ...", file=sys.stderr)
        subprocess.run(
            [str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(WHEELS), OLD],
            check=True,
        )
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--find-links", str(WHEELS), OLD_SERVER],
        check=True,
    )
    return python


# --- targets --------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str = ""
    gateway: asyncio.subprocess.Process | None = None
    engines: list[asyncio.subprocess.Process] = field(default_factory=list)
    model: str = ""

    def engine_pids(self) -> list[int]:
        if self.engines:
            return [p.pid for p in self.engines]
        assert self.gateway is not None
        return children(self.gateway.pid, b"fognode.embedded.child")

    def gateway_pids(self) -> list[int]:
        assert self.gateway is not None
        return [self.gateway.pid, *children(self.gateway.pid, b"fognode.gateway.node.worker")]

    async def stop(self) -> None:
        await stop(*[p for p in (self.gateway, *self.engines) if p is not None])


def children(parent: int, marker: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and marker in cmdline:
            found.append(int(entry.name))
    return found


def memory_mib(pids: Sequence[int], key: str = "Pss") -> float:
    """Sum of PSS (or Rss) over the processes, from /proc/PID/smaps_rollup."""
    total = 0
    for pid in pids:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        found = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        total += int(found.group(1)) if found else 0
    return total / 1024


GATEWAY_ENV = {
    "FOGNODE_MDNS": "false",
    "FOGNODE_LOG_LEVEL": "WARNING",
    "FOGNODE_USAGE_ACCOUNTING": "false",
    # Phones are different people; the bench is one client.
    "FOGNODE_PER_USER_CONCURRENT_REQUESTS": "64",
    "FOGNODE_PER_USER_QUEUED_REQUESTS": "64",
    "FOGNODE_EMBEDDED_CONTEXT_SIZE": str(CONTEXT),
    "OMP_WAIT_POLICY": "PASSIVE",
}


async def gateway(port: int, data: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await start(
        sys.executable,
        "-m",
        "fognode.gateway.cli",
        "serve",
        "--no-tls",
        "--auth",
        "none",
        "--port",
        str(port),
        env={"XDG_DATA_HOME": str(data), "FOGNODE_WORKERS": "1", **GATEWAY_ENV, **env},
    )


async def answers(url: str, limit: float = 300) -> None:
    """Until ``url`` answers 200 (a gateway's /readyz, an engine's /health)."""
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


async def new_target(
    name: str, data: Path, model: str, slots: int, threads: int, **env: str
) -> Target:
    port = free_port()
    proc = await gateway(
        port,
        data,
        {
            "FOGNODE_UPSTREAM_KIND": "embedded",
            "FOGNODE_EMBEDDED_MODEL": model,
            "FOGNODE_EMBEDDED_PARALLEL": str(slots),
            "FOGNODE_EMBEDDED_THREADS": str(threads),
            **env,
        },
    )
    target = Target(name, f"http://127.0.0.1:{port}", proc, model=model)
    await answers(f"{target.url}/readyz")
    return target


async def old_target(name: str, data: Path, model: str, processes: int, threads: int) -> Target:
    options = EmbeddedOptions(models_dir=data / "models", model=model)
    gguf = await asyncio.to_thread(model_file, options)
    python = await asyncio.to_thread(old_python)
    fmt = ["gemma"] if model == "gemma3:270m" else []
    engines, urls = [], []
    for _ in range(processes):
        port = free_port()
        engines.append(
            await start(
                str(python),
                str(OLD_ENGINE),
                str(gguf),
                options.model_alias,
                str(port),
                str(threads),
                str(CONTEXT),
                *fmt,
                env={"OMP_WAIT_POLICY": "PASSIVE"},
            )
        )
        urls.append(f"http://127.0.0.1:{port}")
    target = Target(name, engines=engines, model=model)
    for url in urls:
        await answers(f"{url}/v1/models")
    port = free_port()
    target.gateway = await gateway(
        port,
        data,
        {
            "FOGNODE_UPSTREAM_KIND": "openai",
            "FOGNODE_UPSTREAM_URLS": json.dumps(urls),
            "FOGNODE_MAX_CONCURRENT_REQUESTS": str(processes),
            "FOGNODE_UPSTREAM_MAX_CONCURRENT": "1",
        },
    )
    target.url = f"http://127.0.0.1:{port}"
    await answers(f"{target.url}/readyz")
    return target


# --- phones ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phone:
    ttft: float  # seconds from the request to the first content token
    tokens: int
    decode: float  # tokens/s from the first token to the last
    done: float  # monotonic time of the last token


async def phone(
    http: aiohttp.ClientSession,
    target: Target,
    messages: list[dict[str, str]],
    tokens: int,
    **extra: object,
) -> tuple[Phone, str]:
    body = {
        "model": target.model,
        "messages": messages,
        "stream": True,
        "max_tokens": tokens,
        "temperature": 0,
        **extra,
    }
    started = time.monotonic()
    first = last = 0.0
    count = 0
    text: list[str] = []
    async with http.post(f"{target.url}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            if not raw.startswith(b"data: {"):
                continue
            chunk = json.loads(raw[6:])
            delta = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if delta:
                last = time.monotonic()
                first = first or last
                count += 1
                text.append(delta)
    # From the first token to the last: a few tokens can arrive in one read,
    # so a rate over fewer than eight says nothing.
    decode = (count - 1) / (last - first) if count >= 8 and last > first else math.nan
    return Phone(first - started, count, decode, last), "".join(text)


@dataclass(frozen=True)
class Crowd:
    worst_ttft: float
    median_ttft: float
    total_rate: float  # every phone's tokens over the wall time
    decode: float  # median per-phone decode rate
    tokens: int


async def crowd(target: Target, phones: int, tokens: int, round_: int) -> Crowd:
    timeout = aiohttp.ClientTimeout(total=1200)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        started = time.monotonic()
        results = await asyncio.gather(
            *(
                phone(
                    http,
                    target,
                    [{"role": "user", "content": PROMPT.format(phone=n, round=round_)}],
                    tokens,
                )
                for n in range(phones)
            )
        )
    runs = [r for r, _ in results]
    wall = max(r.done for r in runs) - started
    rates = [r.decode for r in runs if not math.isnan(r.decode)]
    total = sum(r.tokens for r in runs)
    return Crowd(
        worst_ttft=max(r.ttft for r in runs),
        median_ttft=statistics.median(r.ttft for r in runs),
        total_rate=total / wall,
        decode=statistics.median(rates) if rates else math.nan,
        tokens=total,
    )


# --- reporting ----------------------------------------------------------------------------


def spread(values: Sequence[float], digits: int = 2) -> str:
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def ratios(mine: Sequence[float], theirs: Sequence[float]) -> str:
    per_round = [a / b for a, b in zip(mine, theirs, strict=True) if b]
    return spread(per_round) + "x" if per_round else "n/a"


def table(*header: str) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))


def line(*cells: object) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |")


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (5 min {five:.2f})"


Results = dict[str, dict[str, list[Crowd]]]  # target -> workload -> per round


async def interleaved(
    targets: list[Target],
    workloads: dict[str, Callable[[Target, int], Awaitable[Crowd]]],
    rounds: int,
    after_round: Callable[[Target], None] | None = None,
) -> Results:
    """Each round: every target in turn (the order rotates), every workload."""
    results: Results = {t.name: {w: [] for w in workloads} for t in targets}
    for target in targets:  # warm-up
        await crowd(target, 1, 8, -1)
    for round_ in range(rounds):
        shift = round_ % len(targets)
        for target in targets[shift:] + targets[:shift]:
            for name, work in workloads.items():
                results[target.name][name].append(await work(target, round_))
            if after_round is not None:
                after_round(target)
        print(f"  round {round_ + 1}/{rounds} done, {load()}", file=sys.stderr, flush=True)
    return results


async def measure(
    targets: list[Target],
    phones: Sequence[int],
    tokens: int,
    rounds: int,
    after_round: Callable[[Target], None] | None = None,
) -> Results:
    """Interleaved rounds of ``phones`` at once (each count a workload), then
    the targets stopped, whatever happened."""

    def work(n: int) -> Callable[[Target, int], Awaitable[Crowd]]:
        return lambda target, round_: crowd(target, n, tokens, round_)

    try:
        return await interleaved(targets, {str(n): work(n) for n in phones}, rounds, after_round)
    finally:
        for target in targets:
            await target.stop()


def best_old(results: Results, workload: str, key: Callable[[Crowd], float]) -> str:
    """The old target with the best median for this measure (higher is better)."""
    olds = [n for n in results if n.startswith("old-")]
    return max(olds, key=lambda n: statistics.median(key(c) for c in results[n][workload]))


# --- sections -------------------------------------------------------------------------------


async def phones_section(data: Path, args: argparse.Namespace) -> None:
    model, tokens, rounds = "smollm2:135m", args.tokens, args.rounds
    threads = cores()
    print(f"\n## Phones at once (SmolLM2 135M Q4_1, {tokens} tokens each, temperature 0)\n")
    print(f"{load()} at the start; {rounds} rounds\n")
    targets = [
        await new_target("new-4", data / "n4", model, 4, args.threads or default_threads(threads)),
        await new_target("new-8", data / "n8", model, 8, args.threads or default_threads(threads)),
        await old_target("old-1x2", data / "o1", model, 1, threads),
        await old_target("old-2x1", data / "o2", model, 2, max(1, threads // 2)),
    ]
    memory: dict[str, list[float]] = {t.name: [] for t in targets}

    def remember(target: Target) -> None:
        memory[target.name].append(memory_mib(target.engine_pids()))

    results = await measure(targets, (1, 4, 8), tokens, rounds, remember)
    print(f"{load()} at the end\n")
    table("target", "phones", "worst TTFT s", "median TTFT s", "total tokens/s", "decode/phone")
    for name, by in results.items():
        for work, runs in by.items():
            line(
                name,
                work,
                spread([c.worst_ttft for c in runs]),
                spread([c.median_ttft for c in runs]),
                spread([c.total_rate for c in runs], 1),
                spread([c.decode for c in runs], 1),
            )
    print("\nNew engine against the old setup at its best slot count, per round:\n")
    table("measure", "new", "old (best)", "ratio new/old, median (min-max)")

    def row(what: str, new: str, work: str, key: Callable[[Crowd], float], low: bool) -> None:
        old = best_old(results, work, (lambda c: -key(c)) if low else key)
        mine = [key(c) for c in results[new][work]]
        line(what, new, old, ratios(mine, [key(c) for c in results[old][work]]))

    row("4 phones: worst time to first token", "new-4", "4", lambda c: c.worst_ttft, True)
    row("4 phones: median time to first token", "new-4", "4", lambda c: c.median_ttft, True)
    row("4 phones: total tokens/s", "new-4", "4", lambda c: c.total_rate, False)
    row("8 phones: worst time to first token", "new-8", "8", lambda c: c.worst_ttft, True)
    row("8 phones: total tokens/s", "new-8", "8", lambda c: c.total_rate, False)
    row("1 phone: decode tokens/s", "new-4", "1", lambda c: c.decode, False)
    print("\nEngine memory after each round (PSS MiB: shared model pages counted once):\n")
    table("target", "PSS MiB")
    for name, values in memory.items():
        line(name, spread(values, 0))
    per_slot = [(b - a) / 4 for a, b in zip(memory["new-4"], memory["new-8"], strict=True)]
    per_process = [b - a for a, b in zip(memory["old-1x2"], memory["old-2x1"], strict=True)]
    print(
        f"\nper added slot (new-8 minus new-4, over 4): {spread(per_slot, 0)} MiB; per added "
        f"process of the old setup (old-2x1 minus old-1x2): {spread(per_process, 0)} MiB; "
        f"one old process: {spread(memory['old-1x2'], 0)} MiB"
    )


async def gemma_section(data: Path, args: argparse.Namespace) -> None:
    model, tokens, rounds = "gemma3:270m", args.tokens, args.rounds
    threads = cores()
    print(f"\n## One phone on Gemma 3 270M (Q4_K_M), {tokens} tokens\n")
    print(f"{load()} at the start\n")
    targets = [
        await new_target("new-1", data / "g1", model, 1, threads),
        await old_target("old-1x2", data / "go", model, 1, threads),
    ]
    results = await measure(targets, (1,), tokens, rounds)
    table("target", "decode tokens/s", "time to first token s")
    for name, by in results.items():
        runs = by["1"]
        line(name, spread([c.decode for c in runs], 1), spread([c.worst_ttft for c in runs]))
    mine = [c.decode for c in results["new-1"]["1"]]
    theirs = [c.decode for c in results["old-1x2"]["1"]]
    print(f"\nnew/old decode, per round: {ratios(mine, theirs)}; {load()} at the end")


async def threads_section(data: Path, args: argparse.Namespace) -> None:
    tokens, rounds = args.tokens, args.rounds
    many = cores()
    for model in ("smollm2:135m", "gemma3:270m"):
        print(f"\n## Engine threads ({model}, 4 slots, {tokens} tokens)\n")
        print(f"{load()} at the start\n")
        targets = [
            await new_target("1 thread", data / f"t1-{model}", model, 4, 1),
            await new_target(f"{many} threads", data / f"t{many}-{model}", model, 4, many),
        ]
        results = await measure(targets, (1, 4), tokens, rounds)
        table("threads", "1 phone: decode tokens/s", "4 phones: tokens/s", "4 phones: worst TTFT s")
        for name, by in results.items():
            line(
                name,
                spread([c.decode for c in by["1"]], 1),
                spread([c.total_rate for c in by["4"]], 1),
                spread([c.worst_ttft for c in by["4"]]),
            )
        one, two = results["1 thread"], results[f"{many} threads"]
        decode = ratios([c.decode for c in two["1"]], [c.decode for c in one["1"]])
        total = ratios([c.total_rate for c in two["4"]], [c.total_rate for c in one["4"]])
        print(
            f"\n{many} threads / 1 thread, per round: 1 phone decode {decode}, "
            f"4 phones total {total}; {load()} at the end"
        )


async def workers_section(data: Path, args: argparse.Namespace) -> None:
    tokens, rounds = args.tokens, args.rounds
    many = cores()
    threads = args.threads or default_threads(many)
    print(
        f"\n## Gateway workers in front of the engine (SmolLM2, 4 slots, 4 phones, {tokens} tok)\n"
    )
    print(f"{load()} at the start\n")
    targets = [
        await new_target("1 worker", data / "w1", "smollm2:135m", 4, threads),
        await new_target(
            f"{many} workers", data / "wn", "smollm2:135m", 4, threads, FOGNODE_WORKERS=str(many)
        ),
    ]
    await asyncio.sleep(2)
    at_rest = {t.name: memory_mib(t.gateway_pids()) for t in targets}
    results = await measure(targets, (4,), tokens, rounds)
    table("gateway", "worst TTFT s", "median TTFT s", "total tokens/s", "gateway PSS at rest MiB")
    for name, by in results.items():
        runs = by["4"]
        line(
            name,
            spread([c.worst_ttft for c in runs]),
            spread([c.median_ttft for c in runs]),
            spread([c.total_rate for c in runs], 1),
            f"{at_rest[name]:.0f}",
        )
    one, more = results["1 worker"]["4"], results[f"{many} workers"]["4"]
    total = ratios([c.total_rate for c in more], [c.total_rate for c in one])
    worst = ratios([c.worst_ttft for c in more], [c.worst_ttft for c in one])
    print(
        f"\n{many} workers / 1 worker, per round: total tokens/s {total}, worst TTFT {worst}; "
        f"{load()} at the end"
    )


FILL = (
    "The harbour wall was rebuilt after the winter storms, and the fishermen leave before "
    "dawn to come back when the tide turns. "
)


async def affinity_section(data: Path, args: argparse.Namespace) -> None:
    """Conversations outnumber slots; each turn adds a user message and the answer."""
    model, rounds, turns, conversations, slots = "smollm2:135m", args.rounds, 6, 6, 4
    print(
        f"\n## Slot affinity ({model}, {slots} slots, {conversations} conversations, "
        f"{turns} turns, 16-token answers)\n"
    )
    print(f"{load()} at the start\n")
    targets = [
        await new_target(
            "engine's choice", data / "a1", model, slots, args.threads or default_threads(cores())
        ),
        await new_target(
            "no prompt cache",
            data / "a2",
            model,
            slots,
            args.threads or default_threads(cores()),
            FOGNODE_EMBEDDED_PROMPT_CACHE_MIB="0",
        ),
    ]
    ways = [("engine's choice", targets[0], False), ("pinned id_slot", targets[0], True)]
    ways.append(("no prompt cache", targets[1], False))
    later: dict[str, list[float]] = {w: [] for w, _, _ in ways}
    timeout = aiohttp.ClientTimeout(total=600)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for _, target, _ in ways:
                await phone(http, target, [{"role": "user", "content": "Hello."}], 4)
            for round_ in range(rounds):
                shift = round_ % len(ways)
                for way, target, pinned in ways[shift:] + ways[:shift]:
                    session = f"{way} {round_} {time.monotonic_ns()}"
                    history = [
                        [{"role": "system", "content": f"Session {session}/{c}. " + FILL * 2}]
                        for c in range(conversations)
                    ]
                    ttfts: list[float] = []
                    for turn in range(turns):
                        for c in range(conversations):
                            history[c].append(
                                {"role": "user", "content": f"Turn {turn}: " + FILL * 3}
                            )
                            extra = {"id_slot": c % slots} if pinned else {}
                            run, text = await phone(http, target, history[c], 16, **extra)
                            history[c].append({"role": "assistant", "content": text})
                            if turn >= 2:
                                ttfts.append(run.ttft)
                    later[way].append(statistics.median(ttfts))
                print(f"  round {round_ + 1}/{rounds} done, {load()}", file=sys.stderr, flush=True)
    finally:
        for target in targets:
            await target.stop()
    print(
        "| slot choice | TTFT turns 3-6 s, median of round medians (min-max) | x engine's choice |"
    )
    print("|---|---|---|")
    for way, values in later.items():
        print(f"| {way} | {spread(values, 3)} | {ratios(values, later[ways[0][0]])} |")
    print(f"\n{load()} at the end")


async def engine_target(name: str, python: str, data: Path, model: str, slots: int) -> Target:
    """llama.cpp's server alone, as fognode's child starts it, run by ``python``."""
    options = EmbeddedOptions(models_dir=data / "models", model=model, slots=slots)
    gguf = await asyncio.to_thread(model_file, options)
    template = await asyncio.to_thread(chat_template, options)
    port = free_port()
    config = EngineConfig.build(options, gguf, port, template)
    engine = await start(
        python,
        "-m",
        "fognode.embedded.child",
        str(os.getpid()),
        config.to_json(),
        env={"OMP_WAIT_POLICY": "PASSIVE"},
    )
    target = Target(name, f"http://127.0.0.1:{port}", engines=[engine], model=options.model_alias)
    await answers(f"{target.url}/health")
    return target


async def native_section(data: Path, args: argparse.Namespace) -> None:
    if not args.native_python:
        print("\n(native: skipped, no --native-python)")
        return
    tokens, rounds = args.tokens, args.rounds
    for model in ("smollm2:135m", "gemma3:270m"):
        print(f"\n## The wheel (AVX2) against a build for this CPU ({model}, 4 slots)\n")
        print(f"{load()} at the start\n")
        targets = [
            await engine_target("wheel", sys.executable, data / f"w-{model}", model, 4),
            await engine_target("native", args.native_python, data / f"n-{model}", model, 4),
        ]
        results = await measure(targets, (1, 4), tokens, rounds)
        table("engine", "1 phone: decode tokens/s", "4 phones: total tokens/s")
        for name, by in results.items():
            line(
                name,
                spread([c.decode for c in by["1"]], 1),
                spread([c.total_rate for c in by["4"]], 1),
            )
        wheel, native = results["wheel"], results["native"]
        decode = ratios([c.decode for c in native["1"]], [c.decode for c in wheel["1"]])
        total = ratios([c.total_rate for c in native["4"]], [c.total_rate for c in wheel["4"]])
        print(f"\nnative/wheel per round: 1 phone {decode}, 4 phones {total}; {load()} at the end")


SECTIONS = {
    "phones": phones_section,
    "gemma": gemma_section,
    "threads": threads_section,
    "workers": workers_section,
    "affinity": affinity_section,
    "native": native_section,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, default=0, help="new engine threads (0: fognode's default)"
    )
    parser.add_argument("--native-python", default="", help="a Python with a native xllamacpp")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args()
    print(f"machine: {machine()}; {load()}")
    with tempfile.TemporaryDirectory(prefix="fognode-bench-embedded-") as tmp:
        # The packaged Gemma is assembled once into each data dir it is used from.
        for name in args.sections:
            await SECTIONS[name](Path(tmp), args)


if __name__ == "__main__":
    asyncio.run(main())
