"""fognode side by side with the alternatives, one run, one machine, one load generator.

Upstream: the Ollama stand-in, answering at once (the gateways are measured,
not a model). In front of it, each listening on loopback:

  direct    the stand-in itself: the limit
  fognode   this project (one process, uvloop), auth off / API key / API key +
            TLS, and auth off on the standard asyncio loop
  nginx     reverse proxy, 1 worker, upstream keep-alive, proxy_buffering off
  litellm   LiteLLM proxy (1 worker) with the stand-in as an OpenAI upstream

Figures: requests/s and latency p50/p99 at concurrency 1, 64 and 256 (wrk,
small non-streamed chat completions); time to first SSE event; SSE events
relayed per second with 64 concurrent fast streams; memory per open stream
with 1,000 concurrent slow streams; CPU time per request. Peers are
installed by bench/setup-peers.sh.

    bash bench/setup-peers.sh && .venv/bin/python -m bench.peers
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import machine, start, stop, wait_ready
from fognode.auth.api_keys import entry_for, new_key
from fognode.certs.issuer import SubjectNames
from fognode.certs.lifecycle import init_ca, issue_to_files
from fognode.certs.store import CertPaths
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
CLK = os.sysconf("SC_CLK_TCK")


@dataclass
class Target:
    name: str
    url: str
    pid_of: object = None  # callable returning the pids to measure
    headers: dict[str, str] = field(default_factory=dict)
    ssl: ssl.SSLContext | None = None


def pids_of(proc: asyncio.subprocess.Process, *, children: bool = False) -> list[int]:
    pids = [proc.pid]
    if children:
        for task in Path(f"/proc/{proc.pid}/task").iterdir():
            kids = (task / "children").read_text().split()
            pids += [int(k) for k in kids]
    return pids


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK


def wrk(url: str, headers: dict[str, str], connections: int, seconds: float) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n')
        script.write(f"wrk.body = {json.dumps(json.dumps(BODY))}\n")
        script.write('wrk.headers["Content-Type"] = "application/json"\n')
        for k, v in headers.items():
            script.write(f'wrk.headers["{k}"] = "{v}"\n')
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            script.name,
            f"{url}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50": ms("50"),
        "p99": ms("99"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
    }


async def ttfb(t: Target, n: int) -> float:
    times = []
    conn = aiohttp.TCPConnector(limit=1, ssl=t.ssl if t.ssl else False)
    async with aiohttp.ClientSession(connector=conn) as http:
        for i in range(n + 20):
            started = time.perf_counter()
            async with http.post(
                f"{t.url}/v1/chat/completions", json=dict(BODY, stream=True), headers=t.headers
            ) as resp:
                await resp.content.readuntil(b"\n\n")
                first = time.perf_counter() - started
                await resp.read()
            if i >= 20:
                times.append(first)
    return statistics.median(times) * 1000


async def stream_rate(t: Target, streams: int) -> tuple[float, int]:
    """SSE events per second over `streams` concurrent fast streams."""
    conn = aiohttp.TCPConnector(limit=streams, ssl=t.ssl if t.ssl else False)
    events = 0
    async with aiohttp.ClientSession(connector=conn) as http:

        async def one() -> int:
            async with http.post(
                f"{t.url}/v1/chat/completions", json=dict(BODY, stream=True), headers=t.headers
            ) as resp:
                return (await resp.read()).count(b"data: ")

        await one()
        started = time.perf_counter()
        counts = await asyncio.gather(*(one() for _ in range(streams)))
        elapsed = time.perf_counter() - started
    events = sum(counts)
    return events / elapsed, events


async def memory_per_stream(t: Target, pids: list[int], streams: int) -> float:
    """KiB of proxy memory per open stream, with `streams` slow streams open."""
    conn = aiohttp.TCPConnector(limit=streams, ssl=t.ssl if t.ssl else False)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(None)) as http:
        before = rss_kib(pids)
        responses = []
        opened = asyncio.Event()

        async def hold() -> None:
            async with http.post(
                f"{t.url}/v1/chat/completions",
                json=dict(BODY, stream=True, model="slow:latest"),
                headers=t.headers,
            ) as resp:
                await resp.content.readuntil(b"\n\n")
                responses.append(resp)
                if len(responses) == streams:
                    opened.set()
                await resp.read()

        tasks = [asyncio.create_task(hold()) for _ in range(streams)]
        await asyncio.wait_for(opened.wait(), 120)
        during = rss_kib(pids)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return (during - before) / streams


NGINX = """
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  upstream up {{ server 127.0.0.1:{up}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
"""

LITELLM = """
model_list:
  - model_name: llama3.2:1b
    litellm_params:
      {{model: openai/llama3.2:1b, api_base: "http://127.0.0.1:{up}/v1", api_key: none}}
  - model_name: slow:latest
    litellm_params:
      {{model: openai/slow:latest, api_base: "http://127.0.0.1:{slow}/v1", api_key: none}}
litellm_settings: {{drop_params: true, telemetry: false, request_timeout: 600}}
"""


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="fognode-bench-"))
    paths = CertPaths(work / "certs")
    init_ca(paths, b"benchmark passphrase only", common_name="bench CA")
    issue_to_files(paths, b"benchmark passphrase only", SubjectNames.parse(["localhost"]))
    ca = ssl.create_default_context(cafile=str(paths.ca_cert))
    key = new_key()

    up, slow = free_port(), free_port()
    ports = {
        name: free_port()
        for name in (
            "fognode",
            "fognode-asyncio",
            "fognode+key",
            "fognode+key+tls",
            "nginx",
            "litellm",
        )
    }
    (work / "nginx.conf").write_text(NGINX.format(d=work, up=up, port=ports["nginx"]))
    (work / "litellm.yaml").write_text(LITELLM.format(up=up, slow=slow))
    py = sys.executable
    fog = [
        py,
        "-m",
        "fognode.gateway.cli",
        "serve",
        "--log-level",
        "WARNING",
        "--upstream-url",
        f"http://127.0.0.1:{up}",
    ]
    limits = {
        "FOGNODE_MAX_CONCURRENT_REQUESTS": "4096",
        "FOGNODE_MAX_QUEUED_REQUESTS": "4096",
        "FOGNODE_PER_USER_CONCURRENT_REQUESTS": "4096",
        "FOGNODE_MDNS": "false",
    }
    procs = {
        "upstream": await start(py, "-m", "tests.ollama_standin", "--port", str(up)),
        "slow-upstream": await start(
            py, "-m", "tests.ollama_standin", "--port", str(slow), "--token-delay", "1.0"
        ),
        "fognode": await start(
            *fog, "--no-tls", "--auth", "none", "--port", str(ports["fognode"]), env=limits
        ),
        "fognode-asyncio": await start(
            *fog,
            "--no-tls",
            "--auth",
            "none",
            "--port",
            str(ports["fognode-asyncio"]),
            env={**limits, "FOGNODE_EVENT_LOOP": "asyncio"},
        ),
        "fognode+key": await start(
            *fog,
            "--no-tls",
            "--port",
            str(ports["fognode+key"]),
            env={**limits, "FOGNODE_API_KEYS": entry_for(key, "b", admin=False)},
        ),
        "fognode+key+tls": await start(
            *fog,
            "--tls",
            "--port",
            str(ports["fognode+key+tls"]),
            env={
                **limits,
                "FOGNODE_CERTS_DIR": str(paths.directory),
                "FOGNODE_API_KEYS": entry_for(key, "b", admin=False),
            },
        ),
        "nginx": await start(
            "nginx", "-c", str(work / "nginx.conf"), "-p", str(work), "-g", "daemon off;"
        ),
        "litellm": await start(
            str(ROOT / ".bench-venv/bin/litellm"),
            "--config",
            str(work / "litellm.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(ports["litellm"]),
            "--num_workers",
            "1",
            env={
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                # No master key: measured with auth off, like the others.
                "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
            },
            log=str(work / "litellm.log"),
        ),
    }
    auth = {"Authorization": f"Bearer {key}"}
    targets = [
        Target("direct", f"http://127.0.0.1:{up}", lambda: pids_of(procs["upstream"])),
        Target(
            "fognode", f"http://127.0.0.1:{ports['fognode']}", lambda: pids_of(procs["fognode"])
        ),
        Target(
            "fognode, standard asyncio loop",
            f"http://127.0.0.1:{ports['fognode-asyncio']}",
            lambda: pids_of(procs["fognode-asyncio"]),
        ),
        Target(
            "fognode, API key",
            f"http://127.0.0.1:{ports['fognode+key']}",
            lambda: pids_of(procs["fognode+key"]),
            auth,
        ),
        Target(
            "fognode, API key, TLS",
            f"https://localhost:{ports['fognode+key+tls']}",
            lambda: pids_of(procs["fognode+key+tls"]),
            auth,
            ca,
        ),
        Target(
            "nginx",
            f"http://127.0.0.1:{ports['nginx']}",
            lambda: pids_of(procs["nginx"], children=True),
        ),
        Target(
            "LiteLLM proxy",
            f"http://127.0.0.1:{ports['litellm']}",
            lambda: pids_of(procs["litellm"], children=True),
        ),
    ]
    try:
        await wait_ready(f"http://127.0.0.1:{up}/api/version")
        await wait_ready(f"http://127.0.0.1:{slow}/api/version")
        for t in targets[1:]:
            await wait_ready(
                f"{t.url}/v1/models" if "LiteLLM" not in t.name else f"{t.url}/health/liveliness",
                t.ssl,
                limit=180,
            )
        results: dict[str, dict[str, float]] = {}
        for t in targets:
            r: dict[str, float] = {}
            pids = t.pid_of()  # type: ignore[operator]
            for c in args.concurrency:
                cpu0 = cpu_seconds(pids)
                w = wrk(t.url, t.headers, c, args.seconds) if not t.ssl else {}
                if t.ssl:  # wrk cannot pin a CA; measure with the aiohttp client instead
                    continue
                cpu = cpu_seconds(pids) - cpu0
                r[f"rps{c}"], r[f"p50_{c}"], r[f"p99_{c}"] = w["rps"], w["p50"], w["p99"]
                r[f"non2xx{c}"] = w["non2xx"]
                if c == args.concurrency[-1]:
                    r["cpu_us"] = cpu / (w["rps"] * args.seconds) * 1e6
            r["ttfb"] = await ttfb(t, args.ttfb_requests)
            r["events_per_s"], _ = await stream_rate(t, 64)
            if t.name != "direct":
                r["kib_per_stream"] = await memory_per_stream(t, pids, args.streams)
            results[t.name] = r
            print(f"measured {t.name}", file=sys.stderr)
    finally:
        await stop(*procs.values())
        print(f"logs and configs in {work}", file=sys.stderr)

    report(results, args)


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    direct = results["direct"]
    print(f"# fognode vs peers — {machine()}")
    print(
        f"# wrk -t1, {args.seconds:g}s per point; streams: 64 concurrent, 14 events each; "
        f"memory: {args.streams} concurrent slow streams"
    )
    print()
    cs = args.concurrency
    head = ["proxy"] + [f"req/s c={c}" for c in cs] + [f"p50/p99 ms c={c}" for c in cs]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in results.items():
        if f"rps{cs[0]}" not in r:
            continue
        cells = [name] + [
            f"{r[f'rps{c}']:.0f} ({r[f'rps{c}'] / direct[f'rps{c}']:.2f})" for c in cs
        ]
        cells += [f"{r[f'p50_{c}']:.2f} / {r[f'p99_{c}']:.2f}" for c in cs]
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        "| proxy | added p50 latency c=1 (ms) | TTFB (ms) | TTFB added (ms) | SSE events/s "
        "(64 streams) | KiB per open stream | CPU µs per request |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        added = (
            f"{r[f'p50_{cs[0]}'] - direct[f'p50_{cs[0]}']:+.2f}" if f"p50_{cs[0]}" in r else "n/a"
        )
        print(
            f"| {name} | {added} | {r['ttfb']:.2f} | {r['ttfb'] - direct['ttfb']:+.2f} | "
            f"{r['events_per_s']:.0f} | "
            f"{r.get('kib_per_stream', float('nan')):.1f} | "
            f"{r.get('cpu_us', float('nan')):.0f} |"
        )
    fog, lite = results.get("fognode"), results.get("LiteLLM proxy")
    if fog and lite:
        print()
        for c in cs:
            print(f"fognode / LiteLLM throughput at c={c}: {fog[f'rps{c}'] / lite[f'rps{c}']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--ttfb-requests", type=int, default=200)
    parser.add_argument("--streams", type=int, default=1000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
