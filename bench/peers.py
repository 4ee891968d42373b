"""fognode side by side with nginx, Caddy and LiteLLM, on a compiled upstream.

    bash bench/setup.sh                               # once: peers, wrk, the upstream
    .venv/bin/python -m bench.peers --quick           # smoke run, about 2 minutes
    .venv/bin/python -m bench.peers                   # the full table (bench/README.md)
    .venv/bin/python -m bench.peers --report FILE     # print a saved run again

Everything runs on loopback in one run: the upstream, each proxy in front of
it (plain and TLS), wrk and the bench's own clients. Each target is warmed
up, then measured in interleaved rounds (every figure: A B C D, then the next
figure, then the next round), so drift on the machine hits all of them
alike; tables show the median over rounds with (min-max). Ratios are taken
round by round against targets measured in the same round. Memory is
measured first, on freshly started processes, once per memory round.

Any non-200 answer, socket error or incomplete stream marks its figure
INVALID, is listed under the tables, and makes the exit status 1.
bench/README.md says what each figure means and what limits it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import resource
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import fastup
from bench.fastup import MissingTool
from bench.loadgen import (
    CHAT_PATH,
    WrkResult,
    chat_body,
    finish_wrk,
    hold_streams,
    paced_delays,
    start_wrk,
    wrk,
)
from bench.targets import (
    Options,
    Target,
    build_targets,
    cpu_seconds,
    make_certs,
    need,
    rss_kib,
    smoke,
    upstream_stats,
)
from tests.support.helpers import free_port

FAMILIES = ["direct", "fognode", "nginx", "caddy", "litellm"]
# LiteLLM takes ~30 s to start and completes no request at c=256 within a
# 1-second window: the smoke run leaves it out unless asked (--targets).
QUICK_FAMILIES = ["direct", "fognode", "nginx", "caddy"]


@dataclass(frozen=True)
class Plan:
    seconds: int  # one wrk run
    rounds: int
    warmup_seconds: int
    memory_rounds: int
    streams: int  # held open for the memory figure
    paced_streams: int  # per target and round
    stream_events: int
    paced_events: int
    paced_us: int
    close_seconds: int  # new-connection runs (handshake cost)
    settle: float  # wrk runs this long before and after a measuring window (TLS: twice)


QUICK = Plan(1, 1, 0, 1, 200, 3, 64, 20, 10_000, 1, 0.5)
FULL = Plan(5, 3, 3, 3, 1000, 10, 64, 20, 10_000, 3, 1.0)


class Results:
    """Per figure and target, one value per round (None: not valid)."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.values: dict[str, dict[str, list[float | None]]] = {}
        self.problems: list[str] = []
        self.notes: list[str] = []

    def put(self, figure: str, target: str, round_: int, value: float | None) -> None:
        row = self.values.setdefault(figure, {}).setdefault(target, [None] * self.rounds)
        row[round_] = value

    def check(self, figure: str, target: str, round_: int, result: WrkResult) -> bool:
        problem = result.problems()
        if problem:
            self.problems.append(f"round {round_ + 1}, {target}, {figure}: {problem}")
        return problem is None


def cores_busy() -> float:
    """CPU seconds spent not idle, over all cores, since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Bench:
    def __init__(self, plan: Plan, upstream: Target, targets: list[Target], ca: ssl.SSLContext):
        self.plan = plan
        self.upstream = upstream
        self.targets = targets
        self.ca = ca
        self.results = Results(plan.rounds)
        self.memory = Results(plan.memory_rounds)

    # --- processes ---------------------------------------------------------------
    def start_all(self) -> None:
        self.upstream.start()
        self.upstream.wait_ready(self.ca, 10)
        proxies = [t for t in self.targets if t is not self.upstream]
        for t in proxies:
            t.start()
        with ThreadPoolExecutor(len(proxies) or 1) as pool:
            list(pool.map(lambda t: t.wait_ready(self.ca, 240), proxies))
        for t in self.targets:
            smoke(t, self.ca)

    def stop_all(self) -> None:
        for t in [*self.targets, self.upstream]:
            t.stop()

    def url(self, t: Target) -> str:
        return t.url + CHAT_PATH

    def warm(self, t: Target, seconds: int) -> None:
        """Traffic of every kind the rounds send, so pools, caches and lazy
        imports are in place before anything is measured."""
        wrk(self.url(t), connections=64, seconds=seconds, body=chat_body())
        wrk(
            self.url(t),
            connections=64,
            seconds=seconds,
            body=chat_body(stream=True),
            expect_events=self.plan.stream_events + 2,
        )
        wrk(
            self.url(t), connections=1, seconds=1, body=chat_body(), headers={"Connection": "close"}
        )
        try:
            paced_delays(t.endpoint(self.ca), streams=2, events=self.plan.paced_events)
        except (OSError, RuntimeError) as exc:
            # not a measurement; the rounds record it if it happens there
            self.results.notes.append(f"warm-up, {t.name}, paced stream: {exc}")

    # --- memory per open stream ---------------------------------------------------
    def memory_round(self, round_: int) -> None:
        for t in self.targets:
            self.warm(t, 1)
        for index, t in enumerate(self.targets):
            asyncio.run(self.measure_memory(t, round_, f"m{round_}t{index}"))

    async def measure_memory(self, t: Target, round_: int, tag: str) -> None:
        """RSS growth of the target with ``streams`` streams held open, each one
        counted open at both ends: the client read its status and first event,
        the upstream holds a stream under this measurement's tag."""
        wanted = self.plan.streams
        await asyncio.sleep(0.5)
        before = rss_kib(t.pids())
        async with hold_streams(t.endpoint(self.ca), wanted, tag=tag) as held:
            await asyncio.sleep(1.0)  # let every process settle on the open streams
            during = rss_kib(t.pids())
            upstream_open = upstream_stats(self.upstream.port, tag)["open_tagged"]
        opened = min(held.opened, upstream_open)
        name = t.name
        self.memory.put("streams_open", name, round_, opened)
        self.memory.put("rss_before_mib", name, round_, before / 1024)
        where = f"memory round {round_ + 1}, {name}"
        if held.failures or not opened:
            kinds = sorted(set(held.failures))[:3]
            self.memory.problems.append(
                f"{where}: {len(held.failures)} of {wanted} streams failed to open: {kinds}"
            )
        else:
            # per stream really open at both ends, however many that is
            self.memory.put("kib_per_stream", name, round_, (during - before) / opened)
            if opened < wanted:
                self.memory.notes.append(
                    f"{where}: only {opened} of {wanted} streams open ({held.opened} answered "
                    f"200 with a first event, {held.waiting} were still waiting for one when "
                    f"no more opened; the upstream held {upstream_open})"
                )
        # a proxy should close its upstream side when the client leaves
        deadline = time.monotonic() + 10
        while (left := upstream_stats(self.upstream.port, tag)["open_tagged"]) > 0:
            if time.monotonic() > deadline:
                self.memory.notes.append(
                    f"memory round {round_ + 1}, {name}: {left} of {opened} upstream streams "
                    "still open 10 s after their clients left"
                )
                break
            await asyncio.sleep(0.1)

    # --- the rounds -------------------------------------------------------------
    def sample(self, pids: list[int]) -> tuple[float, float, dict[str, int]]:
        return time.monotonic(), cpu_seconds(pids), upstream_stats(self.upstream.port)

    def windowed(
        self,
        t: Target,
        *,
        connections: int,
        seconds: int,
        body: str,
        expect_events: int = 0,
        headers: dict[str, str] | None = None,
    ) -> tuple[WrkResult, Window]:
        """A wrk run with a measuring window in its middle.

        wrk checks every answer of the whole run; rates and CPU come from the
        window only (the upstream's own counters, the target's CPU time), so
        connecting and TLS handshakes at the start, and the ramp-down at the
        end, are outside every figure but the handshake one.
        """
        settle = self.plan.settle * (2 if t.tls else 1)
        total = math.ceil(2 * settle + seconds)
        pids = t.pids()
        proc = start_wrk(
            self.url(t),
            connections=connections,
            seconds=total,
            body=body,
            headers=headers,
            expect_events=expect_events,
        )
        try:
            time.sleep(settle)
            t0, cpu0, up0 = self.sample(pids)
            time.sleep(seconds)
            t1, cpu1, up1 = self.sample(pids)
        finally:
            result = finish_wrk(proc, total + 60)
        window = Window(
            seconds=t1 - t0,
            requests=up1["requests"] - up0["requests"] - 1,  # less the stats request
            events=up1["events"] - up0["events"],
            cpu=cpu1 - cpu0,
        )
        return result, window

    def figure(self, label: str, each: Callable[[Target, int], None], round_: int) -> None:
        for t in self.targets:
            each(t, round_)
        progress(f"round {round_ + 1}: {label}")

    def rate(self, connections: int) -> Callable[[Target, int], None]:
        def each(t: Target, r: int) -> None:
            res, win = self.windowed(
                t, connections=connections, seconds=self.plan.seconds, body=chat_body()
            )
            ok = self.results.check(f"c={connections}", t.name, r, res)
            self.results.put(f"rps_c{connections}", t.name, r, win.rps if ok else None)
            self.results.put(f"p50_ms_c{connections}", t.name, r, res.p50_ms if ok else None)
            self.results.put(f"p99_ms_c{connections}", t.name, r, res.p99_ms if ok else None)
            if connections == 64:
                per = win.cpu / win.requests * 1e6 if ok else None
                self.results.put("cpu_us_per_request", t.name, r, per)

        return each

    def stream_rate(self, t: Target, r: int) -> None:
        res, win = self.windowed(
            t,
            connections=64,
            seconds=self.plan.seconds,
            body=chat_body(stream=True),
            expect_events=self.plan.stream_events + 2,
        )
        ok = self.results.check("streams", t.name, r, res)
        self.results.put("events_per_s", t.name, r, win.events_per_s if ok else None)
        if not ok:  # shown beside INVALID: what it would have been
            self.results.put("events_per_s_unchecked", t.name, r, win.events_per_s)
        self.results.put("cpu_us_per_event", t.name, r, win.cpu / win.events * 1e6 if ok else None)

    def paced(self, t: Target, r: int) -> None:
        try:
            got = paced_delays(
                t.endpoint(self.ca), streams=self.plan.paced_streams, events=self.plan.paced_events
            )
        except (OSError, RuntimeError) as exc:
            self.results.problems.append(f"round {r + 1}, {t.name}, paced streams: {exc}")
            return
        self.results.put("event_delay_us", t.name, r, statistics.median(got.later_us))
        self.results.put("event_delay_p90_us", t.name, r, _quantile(got.later_us, 0.9))
        self.results.put("first_event_us", t.name, r, statistics.median(got.first_us))

    def new_connections(self, t: Target, r: int) -> None:
        res, win = self.windowed(
            t,
            connections=1,
            seconds=self.plan.close_seconds,
            body=chat_body(),
            headers={"Connection": "close"},
        )
        ok = self.results.check("new connections", t.name, r, res)
        self.results.put("close_p50_ms", t.name, r, res.p50_ms if ok else None)
        per = win.cpu / win.requests * 1e6 if ok else None
        self.results.put("cpu_us_per_connection", t.name, r, per)

    def rounds(self, each: Callable[[int], None]) -> float:
        """Run ``each`` round; return the cores other processes used meanwhile
        (the machine's busy time less the targets', the upstream's and the
        bench's own, wrk included)."""
        procs = [*self.targets, *([] if self.upstream in self.targets else [self.upstream])]

        def ours() -> float:
            return own_cpu() + sum(cpu_seconds(t.pids()) for t in procs)

        busy, mine, wall = cores_busy(), ours(), time.monotonic()
        for r in range(self.plan.rounds):
            each(r)
        wall = time.monotonic() - wall
        return round((cores_busy() - busy - (ours() - mine)) / wall, 2)

    def round(self, r: int) -> None:
        self.figure("requests/s at c=1", self.rate(1), r)
        self.figure("requests/s at c=64 and CPU per request", self.rate(64), r)
        self.figure("requests/s at c=256", self.rate(256), r)
        self.figure("SSE events/s, 64 streams", self.stream_rate, r)
        self.figure("one-way delay per event", self.paced, r)
        self.figure("new connection per request (handshakes)", self.new_connections, r)


@dataclass(frozen=True)
class Window:
    """What happened in a measuring window, by the upstream's and /proc's count."""

    seconds: float
    requests: int  # answered by the upstream
    events: int  # content events the upstream sent
    cpu: float  # the target's CPU seconds

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


STARTED = time.monotonic()


def progress(message: str) -> None:
    minutes, seconds = divmod(int(time.monotonic() - STARTED), 60)
    print(f"[{minutes:2d}:{seconds:02d}] {message}", file=sys.stderr, flush=True)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def versions() -> dict[str, str]:
    def out(*cmd: str) -> str:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return "missing"
        lines = (done.stdout or done.stderr).strip().splitlines()
        return lines[0] if lines else "?"

    import aiohttp

    litellm = fastup.cache_dir() / "litellm-venv" / "bin" / "python"
    return {
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "fognode": out("git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"),
        "nginx": out("nginx", "-v").rsplit("/", 1)[-1],
        "caddy": out("caddy", "version").split(" ")[0],
        "wrk": out("wrk", "-v").split(" [")[0].removeprefix("wrk "),
        "litellm": out(
            str(litellm), "-c", "import importlib.metadata as m; print(m.version('litellm'))"
        ),
    }


def set_up(plan: Plan, out: str | None, *, prefix: str = "", **extra: Any) -> Options:
    """What a run needs before any target starts: wrk, the upstream built,
    file descriptors for every stream, and its directory (``out``, or a new
    one in the cache named by ``prefix`` and the time)."""
    need("wrk")
    fastup.build()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = Path(out) if out else fastup.cache_dir() / "runs" / f"{prefix}{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    return Options(
        workdir=work,
        upstream_port=free_port(),
        stream_events=plan.stream_events,
        paced_events=plan.paced_events,
        paced_us=plan.paced_us,
        max_streams=plan.streams,
        **extra,
    )


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    overrides = {k: getattr(args, k) for k in ("seconds", "rounds", "streams") if getattr(args, k)}
    if args.memory_rounds is not None:
        overrides["memory_rounds"] = args.memory_rounds
    plan = Plan(**{**asdict(plan), **overrides})
    chosen = args.targets or (QUICK_FAMILIES if args.quick else FAMILIES)
    families = [f for f in FAMILIES if f in chosen]
    if args.baseline:
        families.insert(
            families.index("fognode") + 1 if "fognode" in families else 1, "fognode-base"
        )
    if args.fognode_workers:
        families.insert(
            families.index("fognode") + 1 if "fognode" in families else 1, "fognode-workers"
        )
    opts = set_up(
        plan,
        args.out,
        fognode_workers=args.fognode_workers,
        baseline=Path(args.baseline).resolve() if args.baseline else None,
    )
    work = opts.workdir
    upstream, targets = build_targets(
        opts, families, tls=not args.no_tls, ports=[free_port() for _ in range(2 * len(families))]
    )
    _, ca = make_certs(work / "certs")
    bench = Bench(plan, upstream, targets, ca)
    started = time.monotonic()
    meta: dict[str, object] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "kernel": platform.release(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "versions": versions(),
        "plan": asdict(plan),
        "command": " ".join(sys.argv),
        "workdir": str(work),
    }
    progress(f"run directory {work}")
    try:
        for m in range(plan.memory_rounds):
            if m:
                bench.stop_all()
            progress(f"memory round {m + 1}: starting every target afresh")
            bench.start_all()
            bench.memory_round(m)  # warms each target up first
            progress(f"memory round {m + 1}: done")
        warmup = plan.warmup_seconds
        if not plan.memory_rounds:
            bench.start_all()
            warmup = max(1, warmup)
        if warmup:
            progress("warming up")
            for t in targets:
                bench.warm(t, warmup)
        meta["other_load_cores"] = bench.rounds(bench.round)
    finally:
        bench.stop_all()
    saved = {
        "meta": meta,
        "targets": [{"name": t.name, "family": t.family, "tls": t.tls} for t in targets],
        "values": {**bench.results.values, **bench.memory.values},
        "problems": bench.results.problems + bench.memory.problems,
        "notes": bench.results.notes + bench.memory.notes,
    }
    return finish(saved, started, report)


def finish(saved: dict[str, Any], started: float, report: Callable[[dict[str, Any]], str]) -> int:
    """Keep a run's results in its directory and print its tables; the exit
    status is 1 when any figure was invalid."""
    meta = saved["meta"]
    meta["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    meta["minutes"] = round((time.monotonic() - started) / 60, 1)
    path = Path(meta["workdir"]) / "results.json"
    path.write_text(json.dumps(saved, indent=1))
    print(report(saved))
    progress(f"raw results: {path}")
    return 1 if saved["problems"] else 0


# --- the report ---------------------------------------------------------------------


def _clean(values: Sequence[float | None] | None) -> list[float]:
    return [v for v in values or [] if v is not None]


def cell(values: Sequence[float | None] | None, digits: int = 0, scale: float = 1.0) -> str:
    """Median (min-max) over rounds."""
    vals = [v * scale for v in _clean(values)]
    if not values:
        return "n/a"
    if not vals:
        return "INVALID"
    med = statistics.median(vals)
    text = f"{med:,.{digits}f}"
    if len(vals) > 1:
        text += f" ({min(vals):,.{digits}f}-{max(vals):,.{digits}f})"
    if len(vals) < len(values):
        text += f" [{len(values) - len(vals)} invalid]"
    return text


def per_round(
    a: Sequence[float | None] | None,
    b: Sequence[float | None] | None,
    op: Callable[[float, float], float],
) -> list[float | None] | None:
    if not a or not b:
        return None
    return [
        op(x, y) if x is not None and y is not None else None for x, y in zip(a, b, strict=True)
    ]


def report(saved: dict[str, Any]) -> str:
    meta, values = saved["meta"], saved["values"]
    targets = saved["targets"]
    names = [t["name"] for t in targets]
    plan = meta["plan"]
    out: list[str] = []
    w = out.append

    def v(figure: str, name: str) -> list[float | None] | None:
        row: list[float | None] | None = values.get(figure, {}).get(name)
        return row

    def peer(t: dict[str, Any], family: str) -> str | None:
        match = [x["name"] for x in targets if x["family"] == family and x["tls"] == t["tls"]]
        if family == "direct":
            match = [x["name"] for x in targets if x["family"] == "direct"]
        return match[0] if match else None

    def ratio(figure: str, t: dict[str, Any], family: str, digits: int = 2) -> str:
        other = peer(t, family)
        if other is None:
            return "n/a"
        return cell(per_round(v(figure, t["name"]), v(figure, other), lambda x, y: x / y), digits)

    def minus(figure: str, t: dict[str, Any], family: str, digits: int, scale: float = 1.0) -> str:
        other = peer(t, family)
        if other is None or t["family"] == family:
            return "—" if t["family"] == family else "n/a"
        return cell(
            per_round(v(figure, t["name"]), v(figure, other), lambda x, y: x - y), digits, scale
        )

    def events(name: str) -> str:
        """Events/s; where answers failed the check, also what was measured."""
        text = cell(v("events_per_s", name))
        unchecked = v("events_per_s_unchecked", name)
        if _clean(unchecked):
            text += f" (measured, unchecked: {cell(unchecked)})"
        return text

    versions = meta["versions"]
    w(f"- Run {meta['date']}, {meta['machine']}, kernel {meta['kernel']}; {meta['minutes']} min.")
    w(
        f"- Load: loadavg {' '.join(meta['loadavg_start'])} at the start, "
        f"{' '.join(meta.get('loadavg_end', ['?']))} at the end; other processes used "
        f"{meta.get('other_load_cores', '?')} cores on average during the rounds."
    )
    w("- Versions: " + ", ".join(f"{k} {val}" for k, val in versions.items()) + ".")
    w(
        f"- Plan: {plan['rounds']} interleaved rounds of {plan['seconds']} s wrk runs "
        f"(-t1) after {plan['warmup_seconds']} s warm-up; streams of {plan['stream_events']} "
        f"events (+ finish + [DONE]); paced: {plan['paced_streams']} streams x "
        f"{plan['paced_events']} events, one every {plan['paced_us'] / 1000:g} ms; memory: "
        f"{plan['streams']} streams, {plan['memory_rounds']} round(s) on fresh processes."
    )
    w("- Cells: median over rounds (min-max).")
    w("")
    w("### The figures of issue 14")
    w("")
    w(
        "| target | CPU µs per proxied request | request path, ms | added delay per event, ms "
        "| SSE events/s, 64 streams | x nginx | KiB per open stream (open) |"
    )
    w("|---|---|---|---|---|---|---|")
    for t in targets:
        n = t["name"]
        opened = _clean(v("streams_open", n))
        w(
            f"| {n} | {cell(v('cpu_us_per_request', n))} "
            f"| {minus('p50_ms_c1', t, 'direct', 3)} "
            f"| {minus('event_delay_us', t, 'direct', 3, 1e-3)} "
            f"| {events(n)} | {ratio('events_per_s', t, 'nginx')} "
            f"| {cell(v('kib_per_stream', n), 1)} ({min(opened) if opened else 0:.0f}) |"
        )
    w("")
    w("### Ratios, round by round")
    w("")
    w(
        "| target | CPU per request x nginx | x Caddy | req/s c=64 x direct | x Caddy "
        "| events/s x nginx | added delay per event x nginx | KiB per stream x Caddy |"
    )
    w("|---|---|---|---|---|---|---|---|")
    for t in targets:
        n = t["name"]
        other = peer(t, "nginx")
        direct = peer(t, "direct")
        delay = None
        if other and direct and t["family"] not in ("direct",):
            mine = per_round(
                v("event_delay_us", n), v("event_delay_us", direct), lambda x, y: x - y
            )
            theirs = per_round(
                v("event_delay_us", other), v("event_delay_us", direct), lambda x, y: x - y
            )
            delay = cell(per_round(mine, theirs, lambda x, y: x / y), 2)
        w(
            f"| {n} | {ratio('cpu_us_per_request', t, 'nginx')} "
            f"| {ratio('cpu_us_per_request', t, 'caddy')} | {ratio('rps_c64', t, 'direct')} "
            f"| {ratio('rps_c64', t, 'caddy')} | {ratio('events_per_s', t, 'nginx')} "
            f"| {delay or 'n/a'} | {ratio('kib_per_stream', t, 'caddy')} |"
        )
    if any(t["family"] == "fognode-base" for t in targets):
        w("")
        w("### This checkout against the baseline (--baseline), round by round")
        w("")
        w(
            "| target | CPU per request x base | req/s c=64 x base | request path x base "
            "| added delay per event x base | events/s x base | KiB per stream x base |"
        )
        w("|---|---|---|---|---|---|---|")
        for t in targets:
            base = peer(t, "fognode-base")
            direct = peer(t, "direct")
            if t["family"] != "fognode" or base is None or direct is None:
                continue
            n = t["name"]

            def added_ratio(figure: str, n: str = n, base: str = base, d: str = direct) -> str:
                """What this target adds over direct, over what the baseline adds."""
                mine = per_round(v(figure, n), v(figure, d), lambda x, y: x - y)
                theirs = per_round(v(figure, base), v(figure, d), lambda x, y: x - y)
                return cell(per_round(mine, theirs, lambda x, y: x / y), 2)

            w(
                f"| {n} | {ratio('cpu_us_per_request', t, 'fognode-base')} "
                f"| {ratio('rps_c64', t, 'fognode-base')} | {added_ratio('p50_ms_c1')} "
                f"| {added_ratio('event_delay_us')} | {ratio('events_per_s', t, 'fognode-base')} "
                f"| {ratio('kib_per_stream', t, 'fognode-base')} |"
            )
    w("")
    w("### Requests (small non-streamed chat completions, wrk)")
    w("")
    w("| target | req/s c=1 | req/s c=64 | req/s c=256 | p50 ms c=1 | p99 ms c=1 | p99 ms c=64 |")
    w("|---|---|---|---|---|---|---|")
    for n in names:
        w(
            f"| {n} | {cell(v('rps_c1', n))} | {cell(v('rps_c64', n))} | {cell(v('rps_c256', n))} "
            f"| {cell(v('p50_ms_c1', n), 3)} | {cell(v('p99_ms_c1', n), 3)} "
            f"| {cell(v('p99_ms_c64', n), 2)} |"
        )
    several = [t for t in targets if t["family"] == "fognode-workers"]
    if several:
        w("")
        w("### fognode with several workers, x one process (fognode of the same round)")
        w("")
        w(
            "| target | req/s c=1 x one | req/s c=64 x one | req/s c=256 x one "
            "| events/s x one | CPU per request x one |"
        )
        w("|---|---|---|---|---|---|")
        for t in several:
            w(
                f"| {t['name']} | {ratio('rps_c1', t, 'fognode')} "
                f"| {ratio('rps_c64', t, 'fognode')} | {ratio('rps_c256', t, 'fognode')} "
                f"| {ratio('events_per_s', t, 'fognode')} "
                f"| {ratio('cpu_us_per_request', t, 'fognode')} |"
            )
    w("")
    w("### Streams")
    w("")
    w(
        "| target | SSE events/s (64 streams) | CPU µs per event | one-way delay per event, µs "
        "(p50) | p90 | first event (with the head), µs |"
    )
    w("|---|---|---|---|---|---|")
    for n in names:
        w(
            f"| {n} | {events(n)} | {cell(v('cpu_us_per_event', n), 1)} "
            f"| {cell(v('event_delay_us', n))} | {cell(v('event_delay_p90_us', n))} "
            f"| {cell(v('first_event_us', n))} |"
        )
    w("")
    w("### TLS handshakes (a new connection for every request, c=1)")
    w("")
    w(
        "| target | new connection + request, p50 ms | handshake adds, ms | CPU µs per "
        "connection | handshake adds, CPU µs |"
    )
    w("|---|---|---|---|---|")
    for t in targets:
        n = t["name"]
        plain = next(
            (x["name"] for x in targets if x["family"] == t["family"] and not x["tls"]), None
        )
        if t["tls"] and plain:
            lat = cell(
                per_round(v("close_p50_ms", n), v("close_p50_ms", plain), lambda x, y: x - y), 3
            )
            cpu = cell(
                per_round(
                    v("cpu_us_per_connection", n),
                    v("cpu_us_per_connection", plain),
                    lambda x, y: x - y,
                )
            )
        else:
            lat = cpu = "—"
        w(
            f"| {n} | {cell(v('close_p50_ms', n), 3)} | {lat} "
            f"| {cell(v('cpu_us_per_connection', n))} | {cpu} |"
        )
    w("")
    w("### Memory per open stream")
    w("")
    w("| target | KiB per open stream | streams open (asked) | RSS before, MiB |")
    w("|---|---|---|---|")
    for n in names:
        w(
            f"| {n} | {cell(v('kib_per_stream', n), 1)} "
            f"| {cell(v('streams_open', n))} ({plan['streams']}) "
            f"| {cell(v('rss_before_mib', n), 1)} |"
        )
    if saved["problems"]:
        w("")
        w("INVALID figures (not trusted, shown as INVALID above):")
        w("")
        w("\n".join(f"- {p}" for p in saved["problems"]))
    if saved["notes"]:
        w("")
        w("Notes:")
        w("")
        w("\n".join(f"- {p}" for p in saved["notes"]))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 s windows, one round, 200 streams"
    )
    parser.add_argument("--seconds", type=int, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds")
    parser.add_argument("--streams", type=int, help="streams held open for the memory figure")
    parser.add_argument("--memory-rounds", type=int, help="fresh starts for the memory figure")
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=FAMILIES,
        help="which to measure (default: all; --quick: all but litellm)",
    )
    parser.add_argument("--no-tls", action="store_true", help="plain HTTP targets only")
    parser.add_argument(
        "--fognode-workers",
        type=int,
        metavar="N",
        help='also fognode with `serve --workers N` ("fognode" itself is one process)',
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also fognode from another checkout (e.g. `git worktree add /tmp/base main`), "
        "as 'fognode base': before and after in the same rounds",
    )
    run_or_report(parser, run, report)


def run_or_report(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], int],
    report: Callable[[dict[str, Any]], str],
) -> None:
    """A bench's command line ends the same way: ``--out`` for the run's
    directory, ``--report`` to print a saved run's tables instead of running."""
    parser.add_argument("--out", help="run directory (default ~/.cache/fognode/bench/runs/...)")
    parser.add_argument("--report", metavar="FILE", help="print the tables of a saved run")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    try:
        sys.exit(run(args))
    except MissingTool as exc:
        sys.exit(f"bench: {exc}")


if __name__ == "__main__":
    main()
