"""Pieces of the auth benchmark (bench/auth.py): processes, readiness, a keep-alive rate."""

from __future__ import annotations

import asyncio
import os
import platform
import ssl
import sys
import time

import aiohttp


async def start(
    *cmd: str, env: dict[str, str] | None = None, log: str | None = None
) -> asyncio.subprocess.Process:
    # A log file for a benchmark peer, opened once at start: blocking is fine here.
    out = open(log, "wb") if log else asyncio.subprocess.DEVNULL  # noqa: SIM115, ASYNC230
    return await asyncio.create_subprocess_exec(
        *cmd,
        stdout=out,
        stderr=asyncio.subprocess.STDOUT if log else asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


async def start_standin(port: int) -> asyncio.subprocess.Process:
    return await start(sys.executable, "-m", "tests.support.ollama_standin", "--port", str(port))


async def start_fognode(
    port: int, upstream: str, *extra: str, **env: str
) -> asyncio.subprocess.Process:
    """fognode with the given flags (default: no auth, so the proxy alone is
    measured), as one process unless ``env`` says otherwise: these benches
    compare per-process costs (the default is one worker per core)."""
    return await start(
        sys.executable,
        "-m",
        "fognode.gateway.cli",
        "serve",
        "--port",
        str(port),
        "--upstream-url",
        upstream,
        "--log-level",
        "WARNING",
        *(extra or ("--auth", "none")),
        env={"FOGNODE_WORKERS": "1", **env},
    )


async def wait_ready(url: str, ssl_ctx: ssl.SSLContext | None = None, limit: float = 15.0) -> None:
    connector = aiohttp.TCPConnector(ssl=ssl_ctx if ssl_ctx is not None else False)
    async with aiohttp.ClientSession(connector=connector) as http:
        for _ in range(int(limit / 0.05)):
            try:
                async with http.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def stop(*procs: asyncio.subprocess.Process) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


def machine() -> str:
    return (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}"
    )


async def keepalive_rate(
    url: str,
    *,
    seconds: float,
    concurrency: int,
    headers: dict[str, str] | None = None,
    connector: aiohttp.TCPConnector | None = None,
) -> float:
    """Requests per second of GET ``url`` from ``concurrency`` keep-alive clients."""
    done = 0
    deadline = time.perf_counter() + seconds
    connector = connector or aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with http.get(url, headers=headers or {}) as resp:
                    await resp.read()
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)
