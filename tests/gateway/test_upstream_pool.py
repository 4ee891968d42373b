"""Several upstreams: routing by model, least busy first, failover, recovery, caps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from fognode.gateway.config.settings import Settings
from fognode.gateway.options import upstream_connections
from fognode.gateway.upstreams.pool import UPSTREAM
from tests.support.gateway import GatewayFactory
from tests.support.helpers import free_port
from tests.support.ollama_standin import OllamaStandIn

GUARD = 10.0


def chat(model: str, stream: bool = False) -> dict[str, object]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def two() -> AsyncIterator[tuple[OllamaStandIn, OllamaStandIn]]:
    gpu = OllamaStandIn(models=("llama3.1:70b", "llama3.2:1b"))
    nuc = OllamaStandIn(models=("qwen2.5:0.5b", "llama3.2:1b"))
    await gpu.start()
    await nuc.start()
    yield gpu, nuc
    await gpu.stop()
    await nuc.stop()


def inference(standin: OllamaStandIn) -> list[str]:
    return [r.path for r in standin.requests if r.path.endswith(("completions", "/api/chat"))]


async def test_requests_go_to_an_upstream_that_has_the_model(
    two: tuple[OllamaStandIn, OllamaStandIn], make_gateway: GatewayFactory
) -> None:
    gpu, nuc = two
    gateway = await make_gateway(gpu.url, upstream_urls=[gpu.url, nuc.url])
    async with aiohttp.ClientSession() as http:
        for model in ("llama3.1:70b", "qwen2.5:0.5b", "llama3.1:70b"):
            async with http.post(f"{gateway.url}/v1/chat/completions", json=chat(model)) as r:
                assert r.status == 200
        # The model list is the union.
        async with http.get(f"{gateway.url}/v1/models") as r:
            ids = [m["id"] for m in (await r.json())["data"]]
        async with http.get(f"{gateway.url}/api/tags") as r:
            names = [m["name"] for m in (await r.json())["models"]]
    assert len(inference(gpu)) == 2 and len(inference(nuc)) == 1
    assert sorted(ids) == sorted(names) == ["llama3.1:70b", "llama3.2:1b", "qwen2.5:0.5b"]


async def test_least_busy_upstream_is_chosen_among_equals(
    two: tuple[OllamaStandIn, OllamaStandIn], make_gateway: GatewayFactory
) -> None:
    gpu, nuc = two
    gpu.gate = asyncio.Queue()
    gateway = await make_gateway(gpu.url, upstream_urls=[gpu.url, nuc.url])
    async with aiohttp.ClientSession() as http:
        held = asyncio.create_task(
            http.post(f"{gateway.url}/v1/chat/completions", json=chat("llama3.2:1b", True))
        )
        async with asyncio.timeout(GUARD):
            while gpu.active == 0 and nuc.active == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        busy, idle = (gpu, nuc) if gpu.active else (nuc, gpu)
        idle.gate = None
        async with http.post(f"{gateway.url}/v1/chat/completions", json=chat("llama3.2:1b")) as r:
            assert r.status == 200
        assert len(inference(idle)) == 1  # went to the idle one
        for _ in range(100):
            if busy.gate is not None:
                busy.gate.put_nowait(None)
        resp = await held
        await resp.read()
        resp.release()


async def test_failover_before_the_first_byte_and_recovery(
    make_gateway: GatewayFactory,
) -> None:
    port = free_port()
    down_url = f"http://127.0.0.1:{port}"
    backup = OllamaStandIn(models=("llama3.2:1b",))
    await backup.start()
    gateway = await make_gateway(
        backup.url, upstream_urls=[down_url, backup.url], upstream_check_interval=0.2
    )
    pool = gateway.app[UPSTREAM]
    try:
        # Pretend the health check has not noticed yet: the dead upstream looks
        # like it has the model and comes first. The request still succeeds.
        pool.members[0].healthy = None
        pool.members[0].breaker.success()
        pool.members[0].models = frozenset({"llama3.2:1b"})
        assert pool.route("llama3.2:1b").choices[0].member is pool.members[0]
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{gateway.url}/v1/chat/completions", json=chat("llama3.2:1b")
            ) as r:
                assert r.status == 200
                # Said so: the second upstream answered, after the first failed.
                assert r.headers["X-Fognode-Upstream"] == "2"
                assert r.headers["X-Fognode-Upstream-Reason"] == "cold,only,failover"
            assert pool.members[0].healthy is False

            # The dead one comes back with a model only it has; checks notice.
            revived = OllamaStandIn(models=("phi4:14b",))
            await revived.start(port=port)
            try:
                async with asyncio.timeout(GUARD):
                    while pool.members[0].healthy is not True:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                async with http.post(
                    f"{gateway.url}/v1/chat/completions", json=chat("phi4:14b")
                ) as r:
                    assert r.status == 200
                assert len(inference(revived)) == 1
            finally:
                await revived.stop()
    finally:
        await backup.stop()


async def test_per_upstream_cap(make_gateway: GatewayFactory) -> None:
    only = OllamaStandIn(models=("llama3.2:1b",))
    await only.start()
    other = OllamaStandIn(models=("llama3.2:1b",))
    await other.start()
    only.gate, other.gate = asyncio.Queue(), asyncio.Queue()
    gateway = await make_gateway(
        only.url, upstream_urls=[only.url, other.url], upstream_max_concurrent=1
    )
    try:
        async with aiohttp.ClientSession() as http:
            first = asyncio.create_task(
                http.post(f"{gateway.url}/v1/chat/completions", json=chat("llama3.2:1b", True))
            )
            second = asyncio.create_task(
                http.post(f"{gateway.url}/v1/chat/completions", json=chat("llama3.2:1b", True))
            )
            async with asyncio.timeout(GUARD):
                while only.active + other.active < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert only.active == 1 and other.active == 1  # one each, by the cap
            # A third waits for a slot (no 503, and never more than the cap upstream).
            third = asyncio.create_task(
                http.post(f"{gateway.url}/v1/chat/completions", json=chat("llama3.2:1b"))
            )
            pool = gateway.app[UPSTREAM]
            async with asyncio.timeout(GUARD):
                while pool.waiting != 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert only.active == 1 and other.active == 1 and not third.done()
            for gate in (only.gate, other.gate):
                for _ in range(100):
                    gate.put_nowait(None)
            for task in (first, second, third):
                resp = await task
                assert resp.status == 200
                await resp.read()
                resp.release()
            assert resp.headers["X-Fognode-Upstream-Reason"].endswith(",waited")
    finally:
        await only.stop()
        await other.stop()


# --- sizing: the connection pool is never the hidden cap on admitted streams --------


@pytest.mark.parametrize("admitted", [1, 300, 5000])
async def test_each_upstreams_connections_are_sized_above_the_admitted_requests(
    make_gateway: GatewayFactory, standin: OllamaStandIn, admitted: int
) -> None:
    """Before, the pool held 256 connections whatever admission allowed: the
    257th admitted stream waited for a connection, unseen (issue 14)."""
    gateway = await make_gateway(
        standin.url,
        upstream_urls=[standin.url, standin.url],
        max_concurrent_requests=admitted,
        per_user_concurrent_requests=admitted,
    )
    members = gateway.app[UPSTREAM].members
    assert len(members) == 2
    for member in members:
        assert member.hop.options.max_connections >= admitted + 1  # + model lists, checks


def test_an_upstream_pool_set_below_the_admitted_requests_is_refused() -> None:
    with pytest.raises(ValueError, match="upstream_max_connections"):
        Settings(max_concurrent_requests=300, upstream_max_connections=256)
    chosen = Settings(max_concurrent_requests=300, upstream_max_connections=400)
    assert upstream_connections(chosen) == 400
