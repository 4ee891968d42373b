"""Sharing a node: does an interactive request go first, and does batch work still start?

A node with 2 slots in front of a slow Ollama stand-in (each answer takes
about a second), `fognode serve --workers 2`, API keys for every user. Two
scenes, each run against every target in the same round (a rotating order,
so no target is always first), several rounds:

    behind ten   both slots busy with batch work, ten users' batch requests
                 waiting, then one interactive request: when does it start
                 (its first token), and after how many of the ten?
    steady load  four interactive users keep both slots busy and the queue
                 full, back to back; one batch request arrives: when does it
                 start, and what do the interactive requests wait meanwhile?

Targets: ``this`` (this checkout: interactive above batch, batch's maximum
wait ``--max-wait``), ``this, no max wait`` (the same classes without a
maximum wait: what the bound buys), and, with ``--baseline DIR``, ``base``
(another checkout, e.g. main before classes: one FIFO). The batch users'
keys carry the class ``batch``; everyone else has the default class.

    mkdir /tmp/base && git archive main | tar -x -C /tmp/base
    .venv/bin/python -m bench.sharing --baseline /tmp/base        # 5 rounds, ~6 min
    .venv/bin/python -m bench.sharing --rounds 1                   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import machine, start, stop, wait_ready
from bench.targets import baseline_package
from fognode.auth.api_keys import entry_for, new_key
from tests.support.helpers import free_port

REPLY = "one two three four five six seven eight nine ten eleven twelve"  # 12 tokens
BATCH_USERS = 10


@dataclass
class Users:
    """Every user's key; the batch users' are marked so by this checkout's rules."""

    keys: dict[str, str] = field(default_factory=dict)  # user -> key

    def add(self, name: str) -> None:
        self.keys[name] = new_key()

    def entries(self) -> list[str]:
        return [entry_for(key, name, admin=False) for name, key in self.keys.items()]


def users() -> Users:
    made = Users()
    for name in ("hold-0", "hold-1", "clinic", "job"):
        made.add(name)
    for n in range(BATCH_USERS):
        made.add(f"batch-{n}")
    for n in range(4):
        made.add(f"phone-{n}")
    return made


def batch_user(name: str) -> bool:
    return name.startswith(("hold-", "batch-", "job"))


@dataclass
class Target:
    name: str
    env: dict[str, str]
    port: int = 0
    proc: Any = None


def targets(args: argparse.Namespace, people: Users, work: Path) -> list[Target]:
    batch_tier = {name: "batch" for name in people.keys if batch_user(name)}
    classes = {
        "FOGNODE_QUOTA_TIERS": json.dumps({"batch": {}}),
        "FOGNODE_QUOTA_API_KEY_TIERS": json.dumps(batch_tier),
        "FOGNODE_PRIORITY_CLASSES": "interactive,batch",
        "FOGNODE_PRIORITY_DEFAULT_CLASS": "interactive",
        "FOGNODE_PRIORITY_TIER_CLASSES": json.dumps({"batch": "batch"}),
    }
    made = [
        Target(
            "this",
            {**classes, "FOGNODE_PRIORITY_MAX_WAIT": json.dumps({"batch": args.max_wait})},
        ),
        Target("this, no max wait", {**classes, "FOGNODE_PRIORITY_MAX_WAIT": "{}"}),
    ]
    if args.baseline:
        base = baseline_package(Path(args.baseline).resolve(), work)
        made.append(Target("base", {"PYTHONPATH": str(base)}))
    return made


async def start_target(target: Target, upstream: str, people: Users, work: Path) -> None:
    target.port = free_port()
    tag = target.name.replace(" ", "-").replace(",", "")
    keys = work / f"{tag}-api-keys"
    keys.write_text("\n".join(people.entries()) + "\n")
    env = {
        "FOGNODE_WORKERS": "2",
        "FOGNODE_TLS": "false",
        "FOGNODE_MDNS": "false",
        "FOGNODE_ONBOARDING_ENABLED": "false",
        "FOGNODE_MAX_CONCURRENT_REQUESTS": "2",
        "FOGNODE_MAX_QUEUED_REQUESTS": "64",
        "FOGNODE_QUEUE_TIMEOUT": "120",
        "FOGNODE_API_KEYS_FILE": str(keys),
        "FOGNODE_USAGE_SQLITE_PATH": str(work / f"{tag}-usage.sqlite3"),
        "FOGNODE_DATA_DIR": str(work / tag),
        **target.env,
    }
    target.proc = await start(
        sys.executable,
        "-m",
        "fognode.gateway.cli",
        "serve",
        "--port",
        str(target.port),
        "--upstream-url",
        upstream,
        "--log-level",
        "WARNING",
        env=env,
        log=str(work / f"{tag}.log"),
    )
    await wait_ready(f"http://127.0.0.1:{target.port}/readyz", limit=60)


async def first_token(
    http: aiohttp.ClientSession, port: int, key: str, name: str
) -> tuple[float, float]:
    """Send one streamed chat; (sent, first token), by the bench's clock."""
    sent = time.monotonic()
    body = {
        "model": "llama3.2:1b",
        "stream": True,
        "messages": [{"role": "user", "content": name}],
    }
    async with http.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{name}: {resp.status} {await resp.text()}")
        got: float | None = None
        async for line in resp.content:
            token = b'"content":"' in line and b'"content":""' not in line
            if got is None and line.startswith(b"data: {") and token:
                got = time.monotonic()
        if got is None:
            raise RuntimeError(f"{name}: no token")
        return sent, got


async def behind_ten(http: aiohttp.ClientSession, target: Target, people: Users) -> dict[str, Any]:
    keys = people.keys

    def ask(name: str) -> asyncio.Task[tuple[float, float]]:
        return asyncio.ensure_future(first_token(http, target.port, keys[name], name))

    holders = [ask("hold-0"), ask("hold-1")]
    await asyncio.sleep(0.2)
    batch = []
    for n in range(BATCH_USERS):
        batch.append(ask(f"batch-{n}"))
        await asyncio.sleep(0.02)  # so that they queue in this order
    await asyncio.sleep(0.2)
    clinic = ask("clinic")
    sent, started = await clinic
    done = await asyncio.gather(*holders, *batch)
    before = sum(got < started for _, got in done[2:])
    return {"wait": started - sent, "after_batch": before}


async def steady_load(
    http: aiohttp.ClientSession, target: Target, people: Users, args: argparse.Namespace
) -> dict[str, Any]:
    keys = people.keys
    waits: list[float] = []
    job: list[tuple[float, float]] = []
    stop_at = [time.monotonic() + 3.0 + args.max_wait * 3]

    async def phone(name: str) -> None:
        while time.monotonic() < stop_at[0]:
            sent, got = await first_token(http, target.port, keys[name], name)
            waits.append(got - sent)

    # Two requests per phone at a time: the queue never empties.
    load = [asyncio.ensure_future(phone(f"phone-{n % 4}")) for n in range(8)]
    await asyncio.sleep(3.0)
    job.append(await first_token(http, target.port, keys["job"], "job"))
    stop_at[0] = min(stop_at[0], time.monotonic())  # the load ends once the job started
    await asyncio.gather(*load)
    sent, started = job[0]
    return {"wait": started - sent, "interactive_median": statistics.median(waits)}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="sharing-bench-"))
    people = users()
    upstream_port = free_port()
    standin = await start(
        sys.executable,
        "-m",
        "tests.support.ollama_standin",
        "--port",
        str(upstream_port),
        "--token-delay",
        # The first word comes at once, each next one after the delay.
        str(args.request_seconds / (len(REPLY.split()) - 1)),
        "--reply",
        REPLY,
    )
    upstream = f"http://127.0.0.1:{upstream_port}"
    await wait_ready(f"{upstream}/api/version")
    all_targets = targets(args, people, work)
    runs: list[dict[str, Any]] = []
    try:
        for target in all_targets:
            await start_target(target, upstream, people, work)
        timeout = aiohttp.ClientTimeout(total=300)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            for target in all_targets:  # warm up: every worker, the upstream's connections
                await asyncio.gather(
                    *(
                        first_token(http, target.port, people.keys[f"phone-{n}"], "warm")
                        for n in range(4)
                    )
                )
            for round_ in range(args.rounds):
                shift = round_ % len(all_targets)
                order = all_targets[shift:] + all_targets[:shift]
                for scene, run in (
                    ("behind ten", lambda t: behind_ten(http, t, people)),
                    ("steady load", lambda t: steady_load(http, t, people, args)),
                ):
                    for target in order:
                        result = {"round": round_, "scene": scene, "target": target.name}
                        result |= await run(target)
                        runs.append(result)
                        print(json.dumps(result), file=sys.stderr)
                        await asyncio.sleep(1.5)  # the queue drains
    finally:
        await stop(*(t.proc for t in all_targets if t.proc is not None), standin)
    return {
        "machine": machine(),
        "args": vars(args),
        "targets": [t.name for t in all_targets],
        "runs": runs,
        "work": str(work),
    }


def spread(values: list[float], fmt: Callable[[float], str] = lambda v: f"{v:.2f}") -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def report(data: dict[str, Any]) -> str:
    a = data["args"]
    runs = data["runs"]
    lines = [
        f"Machine: {data['machine']} (shared with other work). 2 slots, 2 workers, each "
        f"answer ~{a['request_seconds']:g} s; batch's maximum wait {a['max_wait']:g} s; "
        f"{a['rounds']} rounds, targets in a rotating order; median (min-max) of the rounds.",
        "",
        "| target | behind ten: interactive waits (s) | started after how many of the ten "
        "| steady load: batch waits (s) | interactive waits meanwhile (s) |",
        "|---|---|---|---|---|",
    ]
    for name in data["targets"]:

        def of(scene: str, key: str, name: str = name) -> list[float]:
            return [r[key] for r in runs if r["target"] == name and r["scene"] == scene]

        lines.append(
            f"| {name} | {spread(of('behind ten', 'wait'))} "
            f"| {spread(of('behind ten', 'after_batch'), lambda v: f'{v:.0f}')} "
            f"| {spread(of('steady load', 'wait'))} "
            f"| {spread(of('steady load', 'interactive_median'))} |"
        )
    if "base" in data["targets"]:
        ratios = []
        for round_ in {r["round"] for r in runs}:
            pair = {
                r["target"]: r["wait"]
                for r in runs
                if r["round"] == round_ and r["scene"] == "behind ten"
            }
            ratios.append(pair["this"] / pair["base"])
        lines += [
            "",
            "Behind ten, this checkout's interactive wait as a share of the base's, round by "
            f"round: {spread(ratios, lambda v: f'{v:.3f}')}.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", help="another checkout of fognode, measured as 'base'")
    parser.add_argument("--max-wait", type=float, default=5.0, help="batch's, seconds")
    parser.add_argument("--request-seconds", type=float, default=1.0, help="one answer's time")
    parser.add_argument("--report", help="print the report of a saved results.json")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return
    data = asyncio.run(measure(args))
    saved = Path(data["work"]) / "results.json"
    saved.write_text(json.dumps(data, indent=2))
    print(report(data))
    print(f"\n(every value: {saved})", file=sys.stderr)


if __name__ == "__main__":
    main()
