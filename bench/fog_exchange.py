"""What the fog's state exchange costs a node: bytes and CPU per second, with 2, 5 and 20 peers.

One real node (`fognode serve`, one process, as a member of a fog: its node
certificate from a test PKI) on 127.0.0.1 with an Ollama stand-in, and N
simulated peers in one other process: each is a peer port with a node
certificate of the same fog that answers ``GET /fog/state`` with a
realistic state, and asks the node for its state as a member does (every
``fog_refresh_seconds``, moved by up to a fifth at random, over a
kept-alive mutual-TLS connection). So the node pays both directions: its
own state requests to N members and N members' requests to it.

The node's CPU (user + system, from /proc) and the bytes it passes through
read/write system calls (``rchar`` + ``wchar`` from /proc: the TLS records
on the sockets; the node logs at WARNING, so almost nothing else) are read
over a window after a warm-up, with N = 0 (a member of a fog with no
peers) as the baseline of the same round; rounds are interleaved (every N
in each round, in a rotating order) and the spread is shown.

    .venv/bin/python -m bench.fog_exchange                 # 2, 5, 20 peers, 3 rounds
    .venv/bin/python -m bench.fog_exchange --peers 2 5 --rounds 2 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import machine, start, start_standin, stop, wait_ready
from tests.support.helpers import free_port
from tests.support.pki import Pki, make_pki, node_certs_dir

STATE = {
    "node": "",
    "name": "",
    "version": "0.1.0",
    "models": ["llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text:latest"],
    "loaded": ["llama3.2:1b", "qwen2.5:0.5b"],
    "capacity": 8,
    "active": 2,
    "queued": 0,
    "free_slots": 6,
    "wait": 0.0,
    "ttft": 0.21,
    "draining": False,
}
TICK = os.sysconf("SC_CLK_TCK")


# --- the simulated peers (their own process) ------------------------------------------


async def simulate(args: argparse.Namespace) -> None:
    """N peers: each serves its state on its port and asks the node for its own."""
    certs = Path(args.certs)
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []
    for index, port in enumerate(args.ports):
        directory = certs / f"peer{index}"
        body = json.dumps({**STATE, "node": f"peer-{index}", "name": f"peer{index}.local"})

        async def state(request: web.Request, body: str = body) -> web.Response:
            return web.Response(text=body, content_type="application/json")

        app = web.Application()
        app.router.add_get("/fog/state", state)
        server = ssl.create_default_context(
            ssl.Purpose.CLIENT_AUTH, cafile=str(directory / "ca.crt")
        )
        server.verify_mode = ssl.CERT_REQUIRED
        server.load_cert_chain(str(directory / "node.crt"), str(directory / "node.key"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server).start()
        runners.append(runner)
        client = ssl.create_default_context(cafile=str(directory / "ca.crt"))
        client.check_hostname = False
        client.load_cert_chain(str(directory / "node.crt"), str(directory / "node.key"))
        sessions.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client, limit=1)))

    async def ask(session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(random.uniform(0, args.refresh))
        while True:
            try:
                async with session.get(f"https://127.0.0.1:{args.node_port}/fog/state") as r:
                    await r.read()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(args.refresh * random.uniform(0.8, 1.2))

    print("ready", flush=True)
    await asyncio.gather(*(ask(s) for s in sessions))


# --- the measured node ----------------------------------------------------------------


def usage(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and bytes through read/write system calls."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return cpu, int(io["rchar"]) + int(io["wchar"])


async def one(pki: Pki, work: Path, peers: int, args: argparse.Namespace) -> dict[str, float]:
    """The node with ``peers`` simulated peers: its CPU and bytes per second."""
    run = Path(tempfile.mkdtemp(dir=work))
    node_port, peer_port, upstream = free_port(), free_port(), free_port()
    ports = [free_port() for _ in range(peers)]
    node_certs_dir(pki, run / "node", "node")
    for index in range(peers):
        node_certs_dir(pki, run / f"peer{index}", f"peer{index}")
    standin = await start_standin(upstream)
    node = await start(
        sys.executable,
        "-m",
        "fognode.gateway.cli",
        "serve",
        "--port",
        str(node_port),
        "--upstream-url",
        f"http://127.0.0.1:{upstream}",
        "--auth",
        "none",
        "--log-level",
        "WARNING",
        env={
            "FOGNODE_WORKERS": "1",
            "FOGNODE_MDNS": "false",
            "FOGNODE_ONBOARDING": "false",
            "FOGNODE_STATUS_PAGE": "false",
            "FOGNODE_CERTS_DIR": str(run / "node"),
            "FOGNODE_FOG_PORT": str(peer_port),
            "FOGNODE_FOG_PEERS": ",".join(f"127.0.0.1:{p}" for p in ports),
            "FOGNODE_FOG_REFRESH_SECONDS": str(args.refresh),
            "XDG_DATA_HOME": str(run / "data"),
        },
        log=str(run / "node.log"),
    )
    simulated = None
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        ctx.check_hostname = False
        await wait_ready(f"https://127.0.0.1:{node_port}/healthz", ctx)
        if peers:
            simulated = await start(
                sys.executable,
                "-m",
                "bench.fog_exchange",
                "--simulate",
                "--certs",
                str(run),
                "--node-port",
                str(peer_port),
                "--refresh",
                str(args.refresh),
                "--ports",
                *map(str, ports),
                log=str(run / "peers.log"),
            )
        await asyncio.sleep(args.warmup)
        assert node.pid is not None
        cpu0, bytes0 = usage(node.pid)
        began = time.monotonic()
        await asyncio.sleep(args.seconds)
        cpu1, bytes1 = usage(node.pid)
        window = time.monotonic() - began
        return {"cpu": (cpu1 - cpu0) / window, "bytes": (bytes1 - bytes0) / window}
    finally:
        await stop(*(p for p in (simulated, node, standin) if p is not None))


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fog-exchange-"))
    pki = make_pki(work / "pki")
    counts = [0, *args.peers]
    results: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    for round_ in range(args.rounds):
        order = counts[round_ % len(counts) :] + counts[: round_ % len(counts)]
        for n in order:
            results[n].append(await one(pki, work, n, args))
            print(f"round {round_ + 1}, {n} peers: {results[n][-1]}", file=sys.stderr)
    return {"machine": machine(), "args": vars(args), "results": results}


def report(data: dict[str, Any]) -> str:
    results = {int(k): v for k, v in data["results"].items()}
    base = results[0]
    lines = [
        f"Machine: {data['machine']}; refresh {data['args']['refresh']} s, "
        f"{data['args']['rounds']} interleaved rounds of {data['args']['seconds']} s.",
        "",
        "| peers | CPU of the node (% of a core), above no peers | bytes/s through its sockets, "
        "above no peers | per peer: CPU %, bytes/s |",
        "|---|---|---|---|",
    ]
    for n in sorted(k for k in results if k):
        cpu = [100 * (r["cpu"] - b["cpu"]) for r, b in zip(results[n], base, strict=True)]
        byt = [r["bytes"] - b["bytes"] for r, b in zip(results[n], base, strict=True)]
        lines.append(
            f"| {n} | {statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) "
            f"| {statistics.median(byt):,.0f} ({min(byt):,.0f}-{max(byt):,.0f}) "
            f"| {statistics.median(cpu) / n:.3f}, {statistics.median(byt) / n:,.0f} |"
        )
    idle = [100 * b["cpu"] for b in base]
    idle_bytes = statistics.median(b["bytes"] for b in base)
    lines.append(
        f"\nNo peers (the baseline): CPU {statistics.median(idle):.2f} % "
        f"({min(idle):.2f}-{max(idle):.2f}), {idle_bytes:,.0f} B/s."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[2, 5, 20])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="one measuring window")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--refresh", type=float, default=1.5, help="fog_refresh_seconds")
    parser.add_argument("--json", type=Path, help="also write every value here")
    # The simulated peers' own process.
    parser.add_argument("--simulate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    parser.add_argument("--node-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ports", type=int, nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulate:
        asyncio.run(simulate(args))
        return
    data = asyncio.run(measure(args))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    print(report(data))


if __name__ == "__main__":
    main()
