"""Cost of Firebase token verification: cold vs cached, and under concurrency.

Production-mode tokens (RS256, signed by a local key whose x509 map is
served on 127.0.0.1 like Google's) so the real firebase-admin verifier runs.

1. In-process: verifying distinct tokens (cold: signature check every time)
   vs. authorizing the same token again (cached).
2. 200 concurrent requests with one fresh token: how many verifications
   run, and how long the burst takes compared with the same burst with
   auth off (it should not serialize behind the verifier).
3. Separate processes: keep-alive request rate through fognode with auth
   off vs. on with a cached token.

    .venv/bin/python -m bench.auth
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
from aiohttp import web

from bench.common import keepalive_rate, machine, start_fognode, start_standin, stop, wait_ready
from fognode.auth.api_keys import ApiKeys
from fognode.auth.authorizer import TokenAuthorizer
from fognode.auth.firebase import FirebaseVerifier
from fognode.auth.policy import AccessPolicy
from fognode.auth.principal import Access
from tests.support.helpers import free_port
from tests.support.tokens import PROJECT, SigningKey


async def serve_key_set(key: SigningKey) -> tuple[web.AppRunner, str]:
    async def certs(request: web.Request) -> web.Response:
        return web.json_response(
            {key.kid: key.cert_pem}, headers={"Cache-Control": "public, max-age=3600"}
        )

    app = web.Application()
    app.router.add_get("/certs", certs)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/certs"


async def in_process(key: SigningKey, url: str, n: int) -> dict[str, float]:
    verifier = FirebaseVerifier(project_id=PROJECT, certs_url=url)
    authorizer = TokenAuthorizer(
        verifier=verifier, api_keys=ApiKeys([]), policy=AccessPolicy.build()
    )
    tokens = [key.mint(sub=f"user-{i}") for i in range(n)]
    await asyncio.to_thread(verifier.verify, tokens[0])  # fetch and cache the key set
    cold = []
    for token in tokens:
        started = time.perf_counter()
        await authorizer.authorize(f"Bearer {token}", Access.USER)
        cold.append(time.perf_counter() - started)
    warm = []
    for _ in range(n):
        started = time.perf_counter()
        await authorizer.authorize(f"Bearer {tokens[0]}", Access.USER)
        warm.append(time.perf_counter() - started)
    authorizer.close()
    return {"cold_ms": statistics.median(cold) * 1000, "warm_ms": statistics.median(warm) * 1000}


async def burst(url: str, token: str | None, n: int) -> float:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=n)) as http:

        async def one() -> None:
            async with http.get(f"{url}/v1/models", headers=headers) as resp:
                assert resp.status == 200, resp.status
                await resp.read()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - started


async def run(tokens: int, concurrent: int, seconds: float) -> None:
    key = SigningKey.make("bench-key")
    runner, url = await serve_key_set(key)
    try:
        micro = await in_process(key, url, tokens)
        up, off_port, on_port = free_port(), free_port(), free_port()
        upstream = f"http://127.0.0.1:{up}"
        procs = [
            await start_standin(up),
            await start_fognode(off_port, upstream, "--no-tls", "--auth", "none"),
            await start_fognode(
                on_port,
                upstream,
                "--no-tls",
                "--auth",
                "firebase",
                FOGNODE_FIREBASE_PROJECT_ID=PROJECT,
                FOGNODE_FIREBASE_CERTS_URL=url,
            ),
        ]
        off, on = f"http://127.0.0.1:{off_port}", f"http://127.0.0.1:{on_port}"
        try:
            await wait_ready(f"{upstream}/api/version")
            await wait_ready(f"{off}/healthz")
            await wait_ready(f"{on}/healthz")
            await burst(off, None, 20)
            burst_off = await burst(off, None, concurrent)
            burst_on = await burst(on, key.mint(sub="burst-user"), concurrent)
            token = key.mint(sub="steady-user")
            await burst(on, token, 10)  # verified once, cached from here on
            version = "/api/version"
            rate_off = await keepalive_rate(off + version, seconds=seconds, concurrency=16)
            rate_on = await keepalive_rate(
                on + version,
                seconds=seconds,
                concurrency=16,
                headers={"Authorization": f"Bearer {token}"},
            )
        finally:
            await stop(*procs)
    finally:
        await runner.cleanup()

    print(f"# fognode auth bench — {machine()}")
    print("# production-mode RS256 tokens verified by firebase-admin against a local key set")
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| verify a new token (cold, median of {tokens}) | {micro['cold_ms']:.3f} ms |")
    print(f"| authorize a known token (cached, median) | {micro['warm_ms']:.4f} ms |")
    print(f"| cold / cached | {micro['cold_ms'] / micro['warm_ms']:.0f}x |")
    print(
        f"| {concurrent} concurrent requests, one new token: burst time, auth on / off | "
        f"{burst_on * 1000:.0f} ms / {burst_off * 1000:.0f} ms = {burst_on / burst_off:.2f} |"
    )
    print(f"| keep-alive req/s (GET /api/version, 16 clients): auth off | {rate_off:.0f} |")
    print(
        f"| keep-alive req/s: auth on, cached token | {rate_on:.0f} "
        f"({rate_on / rate_off:.2f} of off) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.tokens, args.concurrent, args.seconds))


if __name__ == "__main__":
    main()
