"""Where fognode's CPU goes under load: py-spy on fognode while wrk drives it.

    .venv/bin/python -m bench.profile                 # c=64 small chat completions, 10 s
    .venv/bin/python -m bench.profile --stream        # c=64 streams of 64 events
    .venv/bin/python -m bench.profile --tls --seconds 20

The same upstream and fognode set-up as bench.peers (no auth, log level
WARNING). py-spy samples only threads that are running (not those waiting in
epoll), so the shares are shares of fognode's CPU time, not of wall time.
Frames are functions (line numbers dropped); "own" counts the samples in
which a function was the innermost Python frame (time in C code it called is
charged to it), "cumulative" the samples in which it was anywhere on the
stack. The raw stacks are kept in the run directory for flame graphs.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import subprocess
import sys
import time

from bench import fastup
from bench.fastup import MissingTool
from bench.loadgen import chat_body, finish_wrk, start_wrk, wrk
from bench.targets import Options, build_targets, make_certs
from tests.support.helpers import free_port


def parse_collapsed(text: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Samples, own and cumulative counts per frame from py-spy's raw output
    (one ``frame;frame;...;leaf count`` line per distinct stack, root first)."""
    total = 0
    own: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        # the first element names the process (py-spy -s); frames follow
        frames = [f for f in stack.split(";")[1:] if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            cumulative[frame] += n
    return total, own, cumulative


def table(title: str, counts: collections.Counter[str], total: int, top: int) -> str:
    lines = [f"| {title} | share | samples |", "|---|---|---|"]
    for frame, n in counts.most_common(top):
        lines.append(f"| `{frame}` | {100 * n / total:.1f} % | {n} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--stream", action="store_true", help="streamed answers (64 events)")
    parser.add_argument("--tls", action="store_true", help="fognode with TLS")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    try:
        sys.exit(profile(args))
    except MissingTool as exc:
        sys.exit(f"bench: {exc}")


def profile(args: argparse.Namespace) -> int:
    spy = fastup.cache_dir() / "tools-venv" / "bin" / "py-spy"
    if not spy.is_file():
        raise MissingTool(f"py-spy is not installed ({spy}): run bash bench/setup.sh")
    work = fastup.cache_dir() / "runs" / datetime.datetime.now().strftime("profile-%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    events = 64
    opts = Options(work, free_port(), events, 20, 10_000, max_streams=1024)
    upstream, targets = build_targets(
        opts, ["fognode"], tls=args.tls, ports=[free_port(), free_port()]
    )
    fog = targets[-1]  # the TLS one when asked
    _, ca = make_certs(work / "certs")
    body = chat_body(stream=args.stream)
    expect = events + 2 if args.stream else 0
    upstream.start()
    fog.start()
    try:
        upstream.wait_ready(ca, 10)
        fog.wait_ready(ca, 60)
        url = fog.url + "/v1/chat/completions"
        wrk(url, connections=args.connections, seconds=3, body=body, expect_events=expect)
        load = start_wrk(
            url,
            connections=args.connections,
            seconds=args.seconds + 3,
            body=body,
            expect_events=expect,
        )
        time.sleep(1.5)
        raw = work / "fognode.collapsed"
        subprocess.run(
            [
                str(spy),
                "record",
                "--pid",
                str(fog.pids()[0]),
                "--subprocesses",
                "--nolineno",
                "--rate",
                str(args.rate),
                "--duration",
                str(args.seconds),
                "--format",
                "raw",
                "--output",
                str(raw),
            ],
            check=True,
            capture_output=True,
        )
        result = finish_wrk(load, args.seconds + 60)
    finally:
        fog.stop()
        upstream.stop()
    problem = result.problems()
    total, own, cumulative = parse_collapsed(raw.read_text())
    kind = f"{'streams of 64 events' if args.stream else 'small chat completions'}"
    print(
        f"py-spy on fognode{' (TLS)' if args.tls else ''}, wrk c={args.connections}, {kind}: "
        f"{result.rps:,.0f} req/s over the run, {total} samples of running Python "
        f"({args.rate}/s for {args.seconds} s)."
    )
    print()
    print(table(f"top {args.top} by own time", own, total, args.top))
    print()
    # frames on every stack (runpy, the CLI, the event loop's entry) say nothing
    inner = collections.Counter({f: n for f, n in cumulative.items() if n < total})
    print(
        table(
            f"top {args.top} by cumulative time (frames on every stack left out)",
            inner,
            total,
            args.top,
        )
    )
    print(f"\nraw stacks: {raw}", file=sys.stderr)
    if problem:
        print(f"\nINVALID load: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    main()
