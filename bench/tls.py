"""TLS cost: handshakes and keep-alive throughput, HTTPS vs plain HTTP, one run.

Two fognode processes in front of the same Ollama stand-in, one with TLS
(the local CA's ECDSA P-256 certificate) and one without. The client trusts
only the CA and checks spezillmfog.local while connecting to 127.0.0.1.

    .venv/bin/python -m bench.tls [--connections 300] [--seconds 5] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import (
    keepalive_rate,
    machine,
    pct,
    start_fognode,
    start_standin,
    stop,
    wait_ready,
)
from fognode.certs.issuer import SubjectNames
from fognode.certs.lifecycle import init_ca, issue_to_files
from fognode.certs.store import CertPaths
from tests.helpers import free_port
from tests.test_tls_renewal import ResolveTo127

HOST = "spezillmfog.local"
PASSPHRASE = b"benchmark passphrase only"


async def new_connection_each_time(url: str, ctx: ssl.SSLContext | None, n: int) -> list[float]:
    """Connect, (handshake,) GET /healthz, close: n times in a row."""
    times = []
    for _ in range(n):
        connector = aiohttp.TCPConnector(
            ssl=ctx if ctx else False, force_close=True, resolver=ResolveTo127()
        )
        async with aiohttp.ClientSession(connector=connector) as http:
            started = time.perf_counter()
            async with http.get(f"{url}/healthz") as resp:
                await resp.read()
            times.append(time.perf_counter() - started)
    return times


async def run(connections: int, seconds: float, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = CertPaths(Path(tmp))
        init_ca(paths, PASSPHRASE, common_name="bench CA")
        issue_to_files(paths, PASSPHRASE, SubjectNames.parse([HOST, "127.0.0.1"]))
        ctx = ssl.create_default_context(cafile=str(paths.ca_cert))

        up_port, plain_port, tls_port = free_port(), free_port(), free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        procs = [
            await start_standin(up_port),
            await start_fognode(plain_port, upstream, "--no-tls", "--auth", "none"),
            await start_fognode(
                tls_port, upstream, "--tls", "--auth", "none", FOGNODE_CERTS_DIR=tmp
            ),
        ]
        plain, tls = f"http://{HOST}:{plain_port}", f"https://{HOST}:{tls_port}"
        try:
            await wait_ready(f"http://127.0.0.1:{up_port}/api/version")
            await wait_ready(f"http://127.0.0.1:{plain_port}/healthz")
            await wait_ready(
                f"https://127.0.0.1:{tls_port}/healthz",
                ssl.create_default_context(cafile=str(paths.ca_cert)),
            )
            # Warm up, then measure interleaved in chunks so drift hits both.
            await new_connection_each_time(plain, None, 20)
            await new_connection_each_time(tls, ctx, 20)
            conn = {"plain": [], "tls": []}
            for _ in range(max(1, connections // 50)):
                conn["plain"] += await new_connection_each_time(plain, None, 50)
                conn["tls"] += await new_connection_each_time(tls, ctx, 50)
            rps = {}
            for label, path in (("healthz", "/healthz"), ("proxied", "/api/version")):
                for kind, base, context in (("plain", plain, None), ("tls", tls, ctx)):
                    connector = aiohttp.TCPConnector(
                        ssl=context or False, limit=concurrency, resolver=ResolveTo127()
                    )
                    rps[(kind, label)] = await keepalive_rate(
                        f"{base}{path}",
                        seconds=seconds,
                        concurrency=concurrency,
                        connector=connector,
                    )
        finally:
            await stop(*procs)

    print(f"# fognode TLS bench — {machine()}")
    print(
        f"# {connections} fresh connections each; keep-alive for {seconds:g}s at "
        f"concurrency {concurrency}; client trusts only the local CA (ECDSA P-256)"
    )
    print()
    print("| figure | plain HTTP | HTTPS | HTTPS / plain |")
    print("|---|---|---|---|")
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        p, t = pct(conn["plain"], q), pct(conn["tls"], q)
        print(f"| new connection + GET /healthz, {name} (ms) | {p:.3f} | {t:.3f} | {t / p:.2f} |")
    p50p, p50t = pct(conn["plain"], 0.5), pct(conn["tls"], 0.5)
    print(f"| handshake cost, p50 difference (ms) | n/a | {p50t - p50p:+.3f} | n/a |")
    for label, what in (("healthz", "GET /healthz"), ("proxied", "GET /api/version (proxied)")):
        p, t = rps[("plain", label)], rps[("tls", label)]
        print(f"| keep-alive req/s, {what} | {p:.0f} | {t:.0f} | {t / p:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(run(args.connections, args.seconds, args.concurrency))


if __name__ == "__main__":
    main()
