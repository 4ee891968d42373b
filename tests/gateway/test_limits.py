"""Admission control: global and per-user caps, bounded queues, 429/503 + Retry-After."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from fognode.auth.api_keys import entry_for, new_key
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pipeline.admission import ADMISSION
from tests.support.gateway import GatewayFactory
from tests.support.helpers import STREAMED_CHAT as CHAT
from tests.support.helpers import wait_until
from tests.support.ollama_standin import OllamaStandIn

GUARD = 10.0


async def post(
    http: aiohttp.ClientSession, gateway: RunningServer, key: str | None = None
) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers) as r:
        body = await r.read()
        data = None
        if r.content_type == "application/json":
            import json

            data = json.loads(body)
        return r.status, data, dict(r.headers)


async def test_global_cap_queues_then_refuses_with_503_and_retry_after(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    standin.gate = asyncio.Queue()
    gateway = await make_gateway(standin.url, max_concurrent_requests=2, max_queued_requests=1)
    admission = gateway.app[ADMISSION]
    async with aiohttp.ClientSession() as http:
        running = [asyncio.create_task(post(http, gateway)) for _ in range(2)]
        await wait_until(lambda: standin.active == 2, "two generations upstream")
        queued = asyncio.create_task(post(http, gateway))
        await wait_until(lambda: admission.queued == 1, "one request queued")
        assert len(standin.forwarded) == 2  # the queued one has not reached Ollama

        status, body, headers = await post(http, gateway)
        assert status == 503
        assert body is not None and body["error"]["code"] == "node_busy"
        assert body["error"]["type"] == "service_unavailable_error"
        assert int(headers["Retry-After"]) >= 1

        # Models can still be listed while inference is full.
        async with http.get(f"{gateway.url}/api/tags") as tags:
            assert tags.status == 200

        for _ in range(200):
            standin.gate.put_nowait(None)
        results = await asyncio.gather(*running, queued)
    assert [status for status, _, _ in results] == [200, 200, 200]
    assert admission.active == 0 and admission.queued == 0
    assert admission.rejected_full == 1


async def test_per_user_cap_is_429_and_other_users_are_not_affected(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    alice, bob = new_key(), new_key()
    gateway = await make_gateway(
        standin.url,
        auth="firebase",
        api_keys=[entry_for(alice, "alice", admin=False), entry_for(bob, "bob", admin=False)],
        per_user_concurrent_requests=1,
        per_user_queued_requests=1,
        max_concurrent_requests=8,
    )
    standin.gate = asyncio.Queue()
    async with aiohttp.ClientSession() as http:
        first = asyncio.create_task(post(http, gateway, alice))
        await wait_until(lambda: standin.active == 1, "alice's first request upstream")
        second = asyncio.create_task(post(http, gateway, alice))
        await wait_until(lambda: gateway.app[ADMISSION].queued == 1, "alice queued")
        status, body, headers = await post(http, gateway, alice)
        assert status == 429
        assert body is not None and body["error"]["code"] == "user_concurrency_limit"
        assert body["error"]["type"] == "rate_limit_error"
        assert int(headers["Retry-After"]) >= 1

        bobs = asyncio.create_task(post(http, gateway, bob))
        await wait_until(lambda: standin.active == 2, "bob runs beside alice")
        for _ in range(200):
            standin.gate.put_nowait(None)
        results = await asyncio.gather(first, second, bobs)
    assert [status for status, _, _ in results] == [200, 200, 200]


async def test_queue_timeout_is_503(standin: OllamaStandIn, make_gateway: GatewayFactory) -> None:
    standin.gate = asyncio.Queue()
    gateway = await make_gateway(
        standin.url, max_concurrent_requests=1, max_queued_requests=4, queue_timeout=0.3
    )
    admission = gateway.app[ADMISSION]
    async with aiohttp.ClientSession() as http:
        holder = asyncio.create_task(post(http, gateway))
        await wait_until(lambda: standin.active == 1, "the slot taken")
        status, body, headers = await post(http, gateway)
        assert status == 503 and body is not None
        assert body["error"]["code"] == "queue_timeout" and "Retry-After" in headers
        for _ in range(200):
            standin.gate.put_nowait(None)
        async with asyncio.timeout(GUARD):
            assert (await holder)[0] == 200
    assert admission.active == 0 and admission.timed_out == 1


async def test_a_queued_client_leaving_is_dropped_from_the_queue(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    standin.gate = asyncio.Queue()
    gateway = await make_gateway(standin.url, max_concurrent_requests=1, queue_timeout=60)
    admission = gateway.app[ADMISSION]
    async with aiohttp.ClientSession() as http:
        holder = asyncio.create_task(post(http, gateway))
        await wait_until(lambda: admission.active == 1 and standin.active == 1, "slot taken")
        impatient = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5))
        try:
            await post(impatient, gateway)
            raise AssertionError("the request should have stayed queued")
        except TimeoutError:
            pass
        finally:
            await impatient.close()
        await wait_until(lambda: admission.queued == 0, "the abandoned request dequeued")
        for _ in range(200):
            standin.gate.put_nowait(None)
        async with asyncio.timeout(GUARD):
            assert (await holder)[0] == 200
    assert admission.active == 0
    # The abandoned request never reached Ollama.
    assert len(standin.forwarded) == 1
