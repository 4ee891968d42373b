"""What usage accounting costs per request: fognode with it on and off, in one run.

    .venv/bin/python -m bench.usage                    # 6 rounds of 5 s windows, ~6 min
    .venv/bin/python -m bench.usage --rounds 2 --seconds 2   # smoke run

Three fognode processes (plain HTTP, no auth, the bench's settings) in front
of the compiled upstream, which answers like Ollama (a ``usage`` object in a
non-streamed answer; in a stream, the usage chunk when the request asks for
it with ``stream_options.include_usage``, as fognode's accounting does):

    fognode usage off   FOGNODE_USAGE_ACCOUNTING=false
    fognode             the default: every inference request metered (its
                        usage chunk asked for and stripped again) and one
                        record per request written to SQLite in batches
    fognode quota       accounting plus a quota no run reaches, so every
                        request is also checked against the store first

Each round takes, for every target in turn (the order rotated each round,
so drift on the machine hits all alike): wrk c=64 on small non-streamed
chat completions, then wrk c=64 on streams of 64 events (every answer
checked, the stripped usage chunk included: one event too many is
INVALID). Figures from a window inside each wrk run (bench/peers.py):
requests per second by the upstream's count, the target's CPU time per
request. Ratios are taken per round against "usage off" of the same round;
cells show the median over rounds (min-max).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.loadgen import chat_body
from bench.peers import (
    FULL,
    Bench,
    Plan,
    cell,
    finish,
    per_round,
    progress,
    run_or_report,
    set_up,
)
from bench.targets import Target, build_targets, make_certs
from tests.support.helpers import free_port

FAMILIES = ["fognode-usage-off", "fognode", "fognode-quota"]
BASELINE = "fognode usage off"
KINDS = {"plain": "small non-streamed chat completions", "stream": "streams of 64 events"}


def measure(bench: Bench, t: Target, kind: str, r: int) -> None:
    stream = kind == "stream"
    result, window = bench.windowed(
        t,
        connections=64,
        seconds=bench.plan.seconds,
        body=chat_body(stream=stream),
        expect_events=bench.plan.stream_events + 2 if stream else 0,
    )
    ok = bench.results.check(kind, t.name, r, result)
    bench.results.put(f"rps_{kind}", t.name, r, window.rps if ok else None)
    cpu = window.cpu / window.requests * 1e6 if ok and window.requests else None
    bench.results.put(f"cpu_us_{kind}", t.name, r, cpu)


def run(args: argparse.Namespace) -> int:
    plan = Plan(**{**asdict(FULL), "rounds": args.rounds, "seconds": args.seconds})
    opts = set_up(plan, args.out, prefix="usage-")
    work = opts.workdir
    upstream, targets = build_targets(
        opts, FAMILIES, tls=False, ports=[free_port() for _ in FAMILIES]
    )
    _, ca = make_certs(work / "certs")
    bench = Bench(plan, upstream, targets, ca)
    meta: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}",
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "plan": asdict(plan),
        "command": " ".join([".venv/bin/python -m bench.usage", *sys.argv[1:]]),
        "workdir": str(work),
    }
    started = time.monotonic()
    progress(f"run directory {work}")
    try:
        bench.start_all()
        progress("warming up")
        for t in targets:
            bench.warm(t, plan.warmup_seconds)

        def each(r: int) -> None:
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            for kind in KINDS:
                for t in order:
                    measure(bench, t, kind, r)
            progress(f"round {r + 1} of {plan.rounds}")

        meta["other_load_cores"] = bench.rounds(each)
    finally:
        bench.stop_all()
    saved = {
        "meta": meta,
        "targets": [t.name for t in targets],
        "values": bench.results.values,
        "problems": bench.results.problems,
    }
    return finish(saved, started, report)


def report(saved: dict[str, Any]) -> str:
    meta, values, names = saved["meta"], saved["values"], saved["targets"]
    plan = meta["plan"]

    def v(figure: str, name: str) -> list[float | None] | None:
        row: list[float | None] | None = values.get(figure, {}).get(name)
        return row

    def ratio(figure: str, name: str) -> str:
        return cell(per_round(v(figure, name), v(figure, BASELINE), lambda x, y: x / y), 3)

    out = [
        f"- Run {meta['date']}, {meta['machine']}; {meta['minutes']} min; `{meta['command']}`.",
        f"- Load: loadavg {' '.join(meta['loadavg_start'])} at the start, "
        f"{' '.join(meta.get('loadavg_end', ['?']))} at the end; other processes used "
        f"{meta.get('other_load_cores', '?')} cores on average during the rounds.",
        f"- {plan['rounds']} interleaved rounds of {plan['seconds']} s windows (wrk -t1 c=64) "
        f"after {plan['warmup_seconds']} s warm-up; cells: median over rounds (min-max); "
        f"ratios per round against {BASELINE}.",
    ]
    for kind, what in KINDS.items():
        out += [
            "",
            f"{what.capitalize()}:",
            "",
            "| target | CPU µs per request | x usage off | requests/s | x usage off |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| {n} | {cell(v(f'cpu_us_{kind}', n))} | {ratio(f'cpu_us_{kind}', n)} "
            f"| {cell(v(f'rps_{kind}', n))} | {ratio(f'rps_{kind}', n)} |"
            for n in names
        ]
    if saved["problems"]:
        out += ["", "INVALID figures:", "", *(f"- {p}" for p in saved["problems"])]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    parser.add_argument("--seconds", type=int, default=5, help="one measuring window (default 5)")
    run_or_report(parser, run, report)


if __name__ == "__main__":
    main()
