"""Placement on a node's own upstreams (issue 23): this checkout against a baseline.

    mkdir /tmp/fognode-base && git archive main | tar -x -C /tmp/fognode-base
    .venv/bin/python -m bench.placement --baseline /tmp/fognode-base [--rounds 5]

Each side is a `fognode serve` (one worker, no auth, plain HTTP) in front of
two Ollama stand-in processes (tests/support/ollama_standin.py: Ollama's wire format,
its queue of one generation at a time, its 503 "server busy"). Every case of
every round starts fresh stand-ins and a fresh node, so nothing one side
learned helps the other; the sides alternate (which goes first rotates with
the round). Two cases:

* ``slow-loaded``: one upstream is slow (50 ms a token) and has the model
  loaded, the other is fast (5 ms a token) with the model on disk (1 s to
  load it); no per-upstream cap. Twenty streamed chats arrive at once, then,
  once those are answered, twenty more. Measured: the share that went to the
  slow upstream, and each chat's time to answer (the whole stream) and to
  its first token, as the client sees them.
* ``kill-one``: two equal upstreams (12 ms a token, the model loaded) with
  ``FOGNODE_UPSTREAM_MAX_CONCURRENT=1``; sixteen clients stream without
  pause; after 2 s one upstream is killed (SIGKILL), and the run goes on for
  4 s. Measured after the kill: answers by status, failures before any token
  (a request that had not started streaming anywhere), complete answers.

Figures: every round's value, then the median over rounds with the spread
(min-max), and the per-round ratio after/before where a ratio means
something. The machine may be shared: the ratios are of the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from bench.common import machine, start, start_fognode, stop, wait_ready
from bench.targets import baseline_package
from tests.support.helpers import free_port

MODEL = "llama3.2:1b"
ROOT = Path(__file__).resolve().parent.parent
SIDES = ("before", "after")


@dataclass
class Answer:
    started: float  # seconds from the case's start
    status: int
    upstream: str  # X-Fognode-Upstream
    reason: str
    seconds: float  # to the end of the answer
    first_token: float | None  # to the first content delta
    content: bool
    done: bool


@dataclass
class CaseResult:
    case: str
    side: str
    round: int
    figures: dict[str, float] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)


async def standin(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    proc = await start(
        sys.executable, "-m", "tests.support.ollama_standin", "--port", str(port), *args
    )
    url = f"http://127.0.0.1:{port}"
    await wait_ready(url)
    return proc, url


async def fognode(
    side: str, urls: list[str], work: Path, baseline: Path, **settings: str
) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    env = {
        "FOGNODE_UPSTREAM_URLS": ",".join(urls),
        "FOGNODE_MDNS": "false",
        "FOGNODE_ONBOARDING": "false",
        "FOGNODE_MAX_CONCURRENT_REQUESTS": "32",
        "FOGNODE_PER_USER_CONCURRENT_REQUESTS": "32",
        "FOGNODE_PER_USER_QUEUED_REQUESTS": "32",
        "FOGNODE_MAX_CONNECTIONS_PER_CLIENT": "0",
        "FOGNODE_STREAM_HEARTBEAT_AFTER": "60",
        "XDG_DATA_HOME": str(work / side / "data"),
        **{f"FOGNODE_{k.upper()}": v for k, v in settings.items()},
    }
    if side == "before":
        env["PYTHONPATH"] = str(baseline_package(baseline, work))
    proc = await start_fognode(port, urls[0], "--no-tls", "--auth", "none", **env)
    url = f"http://127.0.0.1:{port}"
    await wait_ready(f"{url}/healthz")
    return proc, url


async def stream(http: aiohttp.ClientSession, url: str, tag: str, t0: float) -> Answer:
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": tag}]}
    began = time.monotonic()
    first: float | None = None
    content = error = False
    text = b""
    try:
        async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
            async for line in resp.content:
                text += line
                if line.startswith(b"data: {"):
                    chunk = json.loads(line[6:])
                    error = error or "error" in chunk
                    if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                        content = True
                        first = first if first is not None else time.monotonic() - began
            status, headers = resp.status, resp.headers
    except aiohttp.ClientError:
        return Answer(began - t0, 0, "", "", time.monotonic() - began, None, content, False)
    done = status == 200 and text.rstrip().endswith(b"data: [DONE]") and not error
    return Answer(
        began - t0,
        status,
        headers.get("X-Fognode-Upstream", ""),
        headers.get("X-Fognode-Upstream-Reason", ""),
        time.monotonic() - began,
        first,
        content,
        done,
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


async def slow_loaded(side: str, round_: int, work: Path, args: argparse.Namespace) -> CaseResult:
    slow, slow_url = await standin("--token-delay", "0.05", "--loaded", MODEL, "--parallel", "1")
    fast, fast_url = await standin(
        "--token-delay", "0.005", "--load-delay", "1.0", "--parallel", "1"
    )
    node, url = await fognode(side, [slow_url, fast_url], work, args.baseline)
    result = CaseResult("slow-loaded", side, round_)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            t0 = time.monotonic()
            for burst in (1, 2):
                answers = await asyncio.gather(
                    *(stream(http, url, f"b{burst}-{i}", t0) for i in range(args.burst))
                )
                result.answers += answers
                ok = [a for a in answers if a.done]
                seconds = [a.seconds for a in ok]
                firsts = [a.first_token for a in ok if a.first_token is not None]
                result.figures |= {
                    f"burst{burst}_slow_share": sum(a.upstream == "1" for a in answers)
                    / len(answers),
                    f"burst{burst}_failed": len(answers) - len(ok),
                    f"burst{burst}_answer_p50": pct(seconds, 0.5),
                    f"burst{burst}_answer_max": max(seconds, default=0.0),
                    f"burst{burst}_first_token_p50": pct(firsts, 0.5),
                    f"burst{burst}_first_token_p95": pct(firsts, 0.95),
                }
    finally:
        await stop(node, slow, fast)
    return result


async def kill_one(side: str, round_: int, work: Path, args: argparse.Namespace) -> CaseResult:
    kept, kept_url = await standin("--token-delay", "0.012", "--loaded", MODEL)
    doomed, doomed_url = await standin("--token-delay", "0.012", "--loaded", MODEL)
    node, url = await fognode(
        side, [kept_url, doomed_url], work, args.baseline, upstream_max_concurrent="1"
    )
    result = CaseResult("kill-one", side, round_)
    answers: list[Answer] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            t0 = time.monotonic()
            ends = t0 + 2.0 + args.after_kill

            async def client(n: int) -> None:
                i = 0
                while time.monotonic() < ends:
                    answers.append(await stream(http, url, f"c{n}-{i}", t0))
                    i += 1

            clients = [asyncio.create_task(client(n)) for n in range(16)]
            await asyncio.sleep(2.0)
            doomed.send_signal(signal.SIGKILL)
            await asyncio.gather(*clients)
    finally:
        await stop(node, kept, doomed)
    after = [a for a in answers if a.started >= 2.0]
    statuses = Counter(a.status for a in after)
    result.answers = answers
    result.figures = {
        "after_requests": len(after),
        "after_502": statuses[502],
        "after_503": statuses[503],
        "after_200_complete": sum(a.done for a in after),
        "after_failed_before_a_token": sum(not a.done and not a.content for a in after),
        "after_complete_per_s": sum(a.done for a in after) / args.after_kill,
        "after_first_token_p50": pct([a.first_token for a in after if a.first_token], 0.5),
    }
    return result


CASES: dict[str, Callable[[str, int, Path, argparse.Namespace], Awaitable[CaseResult]]] = {
    "slow-loaded": slow_loaded,
    "kill-one": kill_one,
}
# Figures whose after/before ratio says something (counts of failures do not).
RATIOS = {
    "burst1_answer_max",
    "burst1_answer_p50",
    "burst2_answer_max",
    "burst2_answer_p50",
    "burst1_first_token_p95",
    "burst2_first_token_p95",
    "after_complete_per_s",
}


def report(results: list[CaseResult], header: str) -> str:
    lines = [header, ""]
    for case in CASES:
        runs = [r for r in results if r.case == case]
        if not runs:
            continue
        names = list(runs[0].figures)
        rounds = sorted({r.round for r in runs})
        lines += [
            f"#### {case}",
            "",
            "| figure | before | after | after/before |",
            "|---|---|---|---|",
        ]
        for name in names:
            by = {
                side: [
                    next(r for r in runs if r.side == side and r.round == n).figures[name]
                    for n in rounds
                ]
                for side in SIDES
            }
            cells = []
            for side in SIDES:
                values = by[side]
                cells.append(
                    f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"
                )
            ratio = ""
            if name in RATIOS:
                ratios = [a / b for a, b in zip(by["after"], by["before"], strict=True) if b]
                if ratios:
                    ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            lines.append(f"| {name} | {cells[0]} | {cells[1]} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of main")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--burst", type=int, default=20, help="chats at once (slow-loaded)")
    parser.add_argument("--after-kill", type=float, default=4.0, help="seconds (kill-one)")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache/fognode/bench/runs")
    args = parser.parse_args()
    args.baseline = args.baseline.resolve()
    load_before = os.getloadavg()
    started = time.monotonic()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    work = args.out / f"placement-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    results: list[CaseResult] = []
    for round_ in range(args.rounds):
        for case in args.cases:
            order = SIDES if round_ % 2 == 0 else tuple(reversed(SIDES))
            for side in order:
                began = time.monotonic()
                result = await CASES[case](side, round_, work, args)
                results.append(result)
                print(
                    f"round {round_ + 1}/{args.rounds} {case} {side}: "
                    f"{time.monotonic() - began:.0f}s {result.figures}",
                    file=sys.stderr,
                    flush=True,
                )
    load_after = os.getloadavg()
    header = (
        f"### Placement on a node's own upstreams: {args.rounds} interleaved rounds\n\n"
        f"- {machine()}; before = {args.baseline}, after = {ROOT}; "
        f"{time.monotonic() - started:.0f} s.\n"
        f"- Load average {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end "
        "(a shared machine: compare within a round)."
    )
    text = report(results, header)
    print(text)
    (work / "results.json").write_text(
        json.dumps([asdict(r) for r in results], indent=1, default=str)
    )
    print(f"\nEvery answer: {work / 'results.json'}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
