"""Phones that pick a node at random, against three nodes: the fog on and off.

Three `fognode serve` processes (one process each) on 127.0.0.1, each with
an Ollama stand-in that takes realistic times: a first token after the
prompt is read, then tokens at the machine's rate, a model that is not in
memory loaded first, and only as many generations at once as the machine
runs (OLLAMA_NUM_PARALLEL; the node's cap matches it). The fleet is uneven
as a home or clinic fleet is:

    a  an old desktop: llama3:8b and qwen2:1b, 15 tokens/s, one at a time
    b  a GPU box: llama3:8b, 40 tokens/s, four at a time
    c  a laptop: gemma2:2b, 20 tokens/s, two at a time

The default load (60 phones, 2 a second, mostly llama3:8b) is within what
the fleet can serve as a whole, and far beyond what a alone can: phones
that picked a wait in its queue without the fog. (At 3 a second the fleet
is saturated, fog or not: every queue grows and the tail is the queue.)

N phones arrive at a steady rate, each picks one of the three nodes at
random (as the SpeziLLMFog app: it never reads TXT) and streams one chat
with the app-faithful client (tests/support/spezillmfog_client.py: its retries,
its error cases), asking for a model drawn from the mix. With the fog on,
the nodes are members of one fog (mutual TLS between their peer ports);
off, each is an island (FOGNODE_FOG=off). Rounds interleave on and off;
every figure is the median of the rounds with their spread.

    .venv/bin/python -m bench.fog                     # 60 phones, 3 rounds
    .venv/bin/python -m bench.fog --phones 30 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import machine, start, stop, wait_ready
from bench.fog_exchange import usage
from tests.support.fog_phones import mix_of
from tests.support.helpers import free_port
from tests.support.pki import Pki, make_pki, node_certs_dir
from tests.support.spezillmfog_client import AppConfig, AppError, generate

M1, M2, M3 = "llama3:8b", "qwen2:1b", "gemma2:2b"
# About 60 tokens: what a phone's short answer takes.
REPLY = (
    "The sky looks blue because sunlight is scattered by the molecules of the air, and "
    "the shorter blue wavelengths are scattered far more than the red ones, so blue light "
    "reaches our eyes from every part of the sky while the sun itself looks a little "
    "yellow, and at sunset the light crosses so much air that most blue is scattered away."
)


@dataclass(frozen=True)
class Machine:
    name: str
    models: tuple[str, ...]
    loaded: tuple[str, ...]
    tokens_per_second: float
    first_token: float  # seconds to read a short prompt
    load: float  # seconds to load a model that is not in memory
    parallel: int


FLEET = (
    Machine("a", (M1, M2), (M1,), 15, 0.8, 8.0, 1),
    Machine("b", (M1,), (M1,), 40, 0.15, 3.0, 4),
    Machine("c", (M3,), (M3,), 20, 0.3, 4.0, 2),
)


@dataclass
class BenchApp(AppConfig):
    """The app, against a node on a port of 127.0.0.1 (the app itself always uses 443)."""

    node_port: int = 443

    @property
    def port(self) -> int:
        return self.node_port


async def start_fleet(pki: Pki, work: Path, fog: bool) -> tuple[list[int], list[Any], list[int]]:
    """The three nodes and their stand-ins; the phones' ports and the nodes' pids."""
    upstreams, procs = await start_standins()
    ports = [free_port() for _ in FLEET]
    peer_ports = [free_port() for _ in FLEET]
    pids: list[int] = []
    for index, (m, upstream) in enumerate(zip(FLEET, upstreams, strict=True)):
        others = [f"127.0.0.1:{p}" for i, p in enumerate(peer_ports) if i != index]
        data = Path(tempfile.mkdtemp(dir=work))
        node = await start(
            sys.executable, "-m", "fognode.gateway.cli", "serve",
            "--port", str(ports[index]),
            "--upstream-url", f"http://127.0.0.1:{upstream}",
            "--auth", "none", "--log-level", "WARNING",
            env={
                "FOGNODE_WORKERS": "1",
                "FOGNODE_MDNS": "false",
                "FOGNODE_ONBOARDING": "false",
                "FOGNODE_CERTS_DIR": str(node_certs_dir(pki, data / "certs", m.name)),
                "FOGNODE_FOG": "true" if fog else "off",
                "FOGNODE_FOG_PORT": str(peer_ports[index]),
                "FOGNODE_FOG_PEERS": ",".join(others),
                "FOGNODE_MAX_CONCURRENT_REQUESTS": str(m.parallel),
                "FOGNODE_PER_USER_CONCURRENT_REQUESTS": "1000",
                "FOGNODE_PER_USER_QUEUED_REQUESTS": "1000",
                "FOGNODE_NODE_ID": f"bench-{m.name}",
                "XDG_DATA_HOME": str(data),
            },
            log=str(data / "node.log"),
        )  # fmt: skip
        procs.append(node)
        assert node.pid is not None
        pids.append(node.pid)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.check_hostname = False
    for port in ports:
        await wait_ready(f"https://127.0.0.1:{port}/healthz", ctx)
    if fog:
        await asyncio.sleep(4)  # the members have asked each other (refresh 1.5 s)
    return ports, procs, pids


HERD = Path.home() / ".cache" / "fognode" / "bench" / "herd-venv" / "bin"


async def start_standins() -> tuple[list[int], list[Any]]:
    ports, procs = [], []
    for m in FLEET:
        port = free_port()
        procs.append(
            await start(
                sys.executable, "-m", "tests.support.ollama_standin", "--port", str(port),
                "--models", ",".join(m.models),
                *(arg for model in m.loaded for arg in ("--loaded", model)),
                "--token-delay", str(1 / m.tokens_per_second),
                "--first-byte-delay", str(m.first_token),
                "--load-delay", str(m.load),
                "--parallel", str(m.parallel),
                "--reply", REPLY,
            )
        )  # fmt: skip
        ports.append(port)
    for port in ports:
        await wait_ready(f"http://127.0.0.1:{port}/api/version")
    return ports, procs


async def start_herd(work: Path) -> tuple[int, list[Any], list[int]]:
    """Ollama Herd (PyPI ollama-herd) in front of the same stand-ins: its router
    and one node agent per machine. Phones send everything to the router: Herd
    is a central router, it cannot take a phone's random pick."""
    standins, procs = await start_standins()
    router = free_port()
    home = Path(tempfile.mkdtemp(dir=work))
    env = {"HOME": str(home)}
    procs.append(
        await start(
            str(HERD / "herd"), "--host", "127.0.0.1", "--port", str(router),
            "--log-level", "WARNING", env=env, log=str(home / "router.log"),
        )
    )  # fmt: skip
    await wait_ready(f"http://127.0.0.1:{router}/")
    for m, port in zip(FLEET, standins, strict=True):
        procs.append(
            await start(
                str(HERD / "herd-node"), "--node-id", m.name,
                "--ollama-host", f"http://127.0.0.1:{port}",
                "--router-url", f"http://127.0.0.1:{router}",
                env=env, log=str(home / f"node-{m.name}.log"),
            )
        )  # fmt: skip
    await asyncio.sleep(10)  # the agents' first heartbeats
    pids = [p.pid for p in procs[len(standins) :] if p.pid is not None]
    return router, procs, pids


async def herd_phones(router: int, args: argparse.Namespace, seed: int) -> list[dict[str, Any]]:
    """The same phones against Herd's router, with a plain streaming client: the
    app itself cannot read Herd's stream (no role in a delta, no ``created``:
    its generated client refuses the chunk), so this measures Herd's router
    at its best."""
    import aiohttp

    models = mix_of(args.mix, seed)[: args.phones]
    url = f"http://127.0.0.1:{router}/v1/chat/completions"
    async with aiohttp.ClientSession() as http:

        async def phone(index: int, model: str) -> dict[str, Any]:
            await asyncio.sleep(index / args.rate)
            began = time.monotonic()
            body = {
                "model": model,
                "stream": True,
                "messages": [{"role": "user", "content": f"Q{index}"}],
            }
            for attempt in range(3):
                try:
                    async with http.post(url, json=body) as response:
                        if response.status == 404:
                            return {"ok": False, "case": "modelAccessError", "model": model}
                        if response.status != 200:
                            await asyncio.sleep(2**attempt)
                            continue
                        ttft, text, served = None, "", None
                        async for line in response.content:
                            if not line.startswith(b"data: {"):
                                continue
                            chunk = json.loads(line[6:])
                            served = chunk.get("model", served)
                            for choice in chunk.get("choices") or []:
                                piece = (choice.get("delta") or {}).get("content") or ""
                                if piece and ttft is None:
                                    ttft = time.monotonic() - began
                                text += piece
                        return {
                            "ok": text == REPLY and served == model,
                            "ttft": ttft,
                            "model": model,
                            "served": served,
                        }
                except aiohttp.ClientError:
                    await asyncio.sleep(2**attempt)
            return {"ok": False, "case": "unknownError", "model": model}

        return list(await asyncio.gather(*(phone(i, m) for i, m in enumerate(models))))


async def phones(
    pki: Pki, ports: list[int], args: argparse.Namespace, seed: int
) -> list[dict[str, Any]]:
    models = mix_of(args.mix, seed)[: args.phones]
    rng = random.Random(seed)
    picks = [rng.randrange(len(ports)) for _ in models]

    async def phone(index: int, model: str) -> dict[str, Any]:
        await asyncio.sleep(index / args.rate)
        cfg = BenchApp(
            model=model, token=lambda: "none", ca_file=pki.ca, node_port=ports[picks[index]]
        )
        began = time.monotonic()
        try:
            result = await generate(cfg, "127.0.0.1", [{"role": "user", "content": f"Q{index}"}])
        except AppError as exc:
            return {"ok": False, "case": exc.case, "node": picks[index], "model": model}
        return {
            "ok": "".join(result.pieces) == REPLY,
            "ttft": result.first_token_after,
            "total": time.monotonic() - began,
            "node": picks[index],
            "model": model,
        }

    return list(await asyncio.gather(*(phone(i, m) for i, m in enumerate(models))))


async def one_run(
    pki: Pki, work: Path, fleet: str, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """``fleet``: "on" (the fog), "off" (islands) or "herd"."""
    router, ports = 0, list[int]()
    if fleet == "herd":
        router, procs, pids = await start_herd(work)
    else:
        ports, procs, pids = await start_fleet(pki, work, fleet == "on")
    try:
        before = [usage(pid)[0] for pid in pids]
        if fleet == "herd":
            outcomes = await herd_phones(router, args, seed)
        else:
            outcomes = await phones(pki, ports, args, seed)
        cpu = sum(usage(pid)[0] for pid in pids) - sum(before)
    finally:
        await stop(*reversed(procs))
    ttft = sorted(o["ttft"] for o in outcomes if o["ok"] and o["ttft"] is not None)
    return {
        "fleet": fleet,
        "ok": sum(o["ok"] for o in outcomes),
        "model_not_found": sum(o.get("case") == "modelAccessError" for o in outcomes),
        "other_failures": sum(
            not o["ok"] and o.get("case") != "modelAccessError" for o in outcomes
        ),
        "substituted": sum(o.get("served") not in (None, o["model"]) for o in outcomes),
        "p50": ttft[len(ttft) // 2] if ttft else None,
        "p95": ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))] if ttft else None,
        "cpu_ms_per_request": 1000 * cpu / len(outcomes),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fog-bench-"))
    pki = make_pki(work / "pki")
    runs: list[dict[str, Any]] = []
    kinds = ["on", "off"] + (["herd"] if args.herd else [])
    for round_ in range(args.rounds):
        shift = round_ % len(kinds)  # a rotating order: no fleet always first
        for fleet in kinds[shift:] + kinds[:shift]:
            runs.append(await one_run(pki, work, fleet, args, seed=round_ + 1))
            print(json.dumps(runs[-1]), file=sys.stderr)
    return {"machine": machine(), "args": vars(args), "runs": runs}


NAMES = {
    "off": "fognode, fog off (islands)",
    "on": "fognode, fog on",
    "herd": "Ollama Herd 0.11.4 (router + 3 agents)",
}


def report(data: dict[str, Any]) -> str:
    a = data["args"]
    lines = [
        f"Machine: {data['machine']} (shared with other work). {a['phones']} phones at "
        f"{a['rate']}/s, mix {a['mix']}, {a['rounds']} rounds, the fleets interleaved in a "
        "rotating order; median (min-max) of the rounds. CPU: the nodes' fognode processes "
        "(Herd: its router and agents), not the stand-ins.",
        "",
        "| fleet | ok | model not found | other failures | first token p50 (s) | p95 (s) "
        "| CPU per request (ms) |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(values: list[float], fmt: str) -> str:
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    for fleet in ("off", "on", "herd"):
        runs = [r for r in data["runs"] if r["fleet"] == fleet and r["p95"] is not None]
        if not runs:
            continue
        lines.append(
            f"| {NAMES[fleet]} | {cell([r['ok'] for r in runs], '.0f')} "
            f"| {cell([r['model_not_found'] for r in runs], '.0f')} "
            f"| {cell([r['other_failures'] for r in runs], '.0f')} "
            f"| {cell([r['p50'] for r in runs], '.2f')} | {cell([r['p95'] for r in runs], '.2f')} "
            f"| {cell([r['cpu_ms_per_request'] for r in runs], '.1f')} |"
        )
    on = [r for r in data["runs"] if r["fleet"] == "on"]
    off = [r for r in data["runs"] if r["fleet"] == "off"]
    ratios = [x["p95"] / y["p95"] for x, y in zip(on, off, strict=False) if x["p95"] and y["p95"]]
    if ratios:
        lines.append(
            f"\np95 with the fog / without, per round: {', '.join(f'{r:.2f}' for r in ratios)}"
        )
    herd = [r for r in data["runs"] if r["fleet"] == "herd"]
    if herd:
        lines.append(
            "Herd: answers from another model than the one asked for (its model substitution), "
            "per round: " + ", ".join(str(r["substituted"]) for r in herd)
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phones", type=int, default=60)
    parser.add_argument("--rate", type=float, default=2.0, help="phones arriving per second")
    parser.add_argument("--mix", default=f"{M1}=45,{M2}=3,{M3}=12")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every value here")
    parser.add_argument(
        "--herd",
        action=argparse.BooleanOptionalAction,
        default=(HERD / "herd").exists(),
        help="also Ollama Herd (default: when bench/setup.sh installed it)",
    )
    args = parser.parse_args()
    data = asyncio.run(measure(args))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    print(report(data))


if __name__ == "__main__":
    main()
