"""Sharing a node, in the gateway: classes in the queue, budgets people can see.

The in-process gateway in front of the stand-in, with API keys: the batch
users' keys are in a tier whose class is ``batch``; everyone else is in the
default class, ``interactive``. Which request reached the upstream first is
the stand-in's own record, so the order is the one the node chose.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest

from fognode.auth.api_keys import entry_for, new_key
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pipeline.admission import ADMISSION
from tests.support.gateway import GatewayFactory
from tests.support.helpers import STREAMED_CHAT, wait_until
from tests.support.ollama_standin import OllamaStandIn

KEYS = {name: new_key() for name in ("ops", "clinic", "hold", "b1", "b2", "b3")}
BATCH = ("hold", "b1", "b2", "b3")
CLASSES: dict[str, Any] = {
    "auth": "firebase",
    "api_keys": [entry_for(key, name, admin=name == "ops") for name, key in KEYS.items()],
    "api_keys_file": None,
    "quota_tiers": {"batch": {"tokens_per_day": 0}},
    "quota_api_key_tiers": {name: "batch" for name in BATCH},
    "priority_tier_classes": {"batch": "batch"},
    "usage_flush_seconds": 0.02,
}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


async def chat(
    http: aiohttp.ClientSession, gateway: RunningServer, name: str, body: dict[str, Any]
) -> tuple[int, bytes, dict[str, str]]:
    async with http.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers=bearer(name)
    ) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


def asked(name: str) -> dict[str, Any]:
    return {**STREAMED_CHAT, "messages": [{"role": "user", "content": name}]}


def order_upstream(standin: OllamaStandIn) -> list[str]:
    return [json.loads(r.body)["messages"][0]["content"] for r in standin.forwarded]


async def test_an_interactive_request_starts_before_the_batch_requests_waiting_ahead_of_it(
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fognode.access")
    standin.gate = asyncio.Queue()  # the first request holds the one slot
    gateway = await make_gateway(
        standin.url,
        max_concurrent_requests=1,
        per_user_concurrent_requests=1,
        stream_heartbeat_after=0.05,
        stream_heartbeat_interval=0.05,
        **CLASSES,
    )
    admission = gateway.app[ADMISSION]
    holder = asyncio.ensure_future(chat(http, gateway, "hold", asked("hold")))
    await wait_until(lambda: standin.active == 1, "the batch job holds the slot")
    waiting = []
    for queued, name in enumerate(("b1", "b2", "b3", "clinic"), 1):
        waiting.append(asyncio.ensure_future(chat(http, gateway, name, asked(name))))
        await wait_until(lambda n=queued: admission.queued == n, f"{name} queued")
    # The clinician's stream is told it is next, though three came before it.
    await asyncio.sleep(0.2)
    gate, standin.gate = standin.gate, None
    for _ in range(1000):
        gate.put_nowait(None)
    results = await asyncio.gather(holder, *waiting)
    assert [status for status, _, _ in results] == [200] * 5
    assert order_upstream(standin) == ["hold", "clinic", "b1", "b2", "b3"]
    clinic_stream = results[-1][1]
    assert b": queued 1\n" in clinic_stream
    assert b": queued 4\n" not in clinic_stream
    # The access log says which class each request waited in.
    lines = [r.getMessage() for r in caplog.records if r.name == "fognode.access"]
    assert any("uid=apikey:clinic class=interactive" in line for line in lines)
    assert sum("class=batch" in line for line in lines) == 4
    async with http.get(f"{gateway.url}/metrics", headers=bearer("ops")) as resp:
        metrics = await resp.text()
    assert 'fognode_admission_wait_seconds_count{class="batch"} 4.0' in metrics
    assert 'fognode_admission_wait_seconds_count{class="interactive"} 1.0' in metrics


async def test_the_status_page_shows_the_queue_by_class_with_user_names_only(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    standin.gate = asyncio.Queue()
    gateway = await make_gateway(standin.url, max_concurrent_requests=1, **CLASSES)
    admission = gateway.app[ADMISSION]
    tasks = [asyncio.ensure_future(chat(http, gateway, "hold", asked("secret prompt")))]
    await wait_until(lambda: standin.active == 1, "the slot taken")
    for name in ("b1", "b2", "clinic"):
        tasks.append(asyncio.ensure_future(chat(http, gateway, name, asked("secret prompt"))))
    await wait_until(lambda: admission.queued == 3, "three waiting")
    async with http.get(f"{gateway.url}/status/live", headers=bearer("ops")) as resp:
        page = await resp.text()
    assert resp.status == 200
    assert 'id="queue-by-class"' in page
    assert 'data-class="batch"' in page and "apikey:b1, apikey:b2" in page
    assert 'data-class="interactive"' in page and "apikey:clinic" in page
    queue = page.split('id="queue-by-class"')[1].split("</table>")[0]
    assert "secret prompt" not in page and "llama3.2" not in queue
    for _ in range(1000):
        standin.gate.put_nowait(None)
    await asyncio.gather(*tasks)


async def usage_of(
    http: aiohttp.ClientSession, gateway: RunningServer, name: str, query: str = ""
) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{gateway.url}/v1/fognode/usage{query}", headers=bearer(name)) as r:
        return r.status, await r.json()


async def test_a_caller_sees_what_is_used_and_left_of_each_budget_and_when_it_resets(
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="fognode.usage")
    words = len(standin.reply.split())
    gateway = await make_gateway(
        standin.url,
        **{
            **CLASSES,
            "quota_tiers": {"batch": {"tokens_per_day": 1000, "requests_per_minute": 5}},
        },
        quota_warn_at=0.5,
    )
    status, fresh = await usage_of(http, gateway, "b1")
    assert status == 200
    assert fresh["user"] == "apikey:b1" and fresh["tier"] == "batch" and fresh["class"] == "batch"
    assert fresh["tokens"]["limit"] == 1000 and fresh["tokens"]["used"] == 0
    assert fresh["tokens"]["remaining"] == 1000 and fresh["requests"]["remaining"] == 5
    assert fresh["warnings"] == [] and fresh["warn_at"] == 0.5
    assert 0 < fresh["tokens"]["resets_in_seconds"] <= 86_400
    warned = []
    for _ in range(4):
        body = {**asked("b1"), "max_tokens": 100}  # a reservation of 101 tokens each
        status, _, headers = await chat(http, gateway, "b1", body)
        assert status == 200
        warned.append(headers.get("x-fognode-quota-warning"))
    # The third request is the one that reaches half of the requests per minute.
    assert warned == [None, None, "requests 60%", "requests 80%"]
    await wait_until(lambda: not gateway.app[ADMISSION].queued, "done")
    await asyncio.sleep(0.1)  # the records are written
    status, now = await usage_of(http, gateway, "b1")
    assert now["requests"]["used"] == 4 and now["requests"]["remaining"] == 1
    assert now["tokens"]["used"] == 4 * (1 + words)  # the prompt's word, and the answer
    assert 55 <= now["requests"]["resets_in_seconds"] <= 60
    assert now["warnings"] == ["requests"]
    # The operator was told once, and the status page lists the user.
    told = [r.getMessage() for r in caplog.records if "requests per minute" in r.getMessage()]
    assert len(told) == 1 and "apikey:b1 has used 60%" in told[0]
    async with http.get(f"{gateway.url}/status/live", headers=bearer("ops")) as resp:
        page = await resp.text()
    assert 'id="budgets"' in page and "apikey:b1" in page.split('id="budgets"')[1]
    # Someone else's: for an administrator only.
    status, refused = await usage_of(http, gateway, "clinic", "?user=apikey:b1")
    assert status == 403 and refused["error"]["code"] == "admin_required"
    assert KEYS["clinic"] not in json.dumps(refused)
    status, theirs = await usage_of(http, gateway, "ops", "?user=apikey:b1")
    assert status == 200 and theirs["requests"]["used"] == 4 and theirs["class"] == "batch"
    status, firebase = await usage_of(http, gateway, "ops", "?user=some-firebase-uid")
    assert status == 200 and firebase["tier"] is None and "note" in firebase
    async with http.get(f"{gateway.url}/v1/fognode/usage") as resp:
        assert resp.status == 401


async def test_without_usage_accounting_the_endpoint_says_so(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(standin.url, usage_accounting=False, **CLASSES)
    status, body = await usage_of(http, gateway, "clinic")
    assert status == 200
    assert body["accounting"] is False and body["tokens"] is None
    assert body["class"] == "interactive"


async def test_a_request_over_a_budget_after_the_warning_is_refused_as_before(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(
        standin.url,
        **{**CLASSES, "quota_tiers": {"batch": {"requests_per_minute": 2}}},
    )
    seen = []
    for _ in range(3):
        status, _, headers = await chat(http, gateway, "b2", asked("b2"))
        seen.append((status, headers.get("x-fognode-quota-warning")))
    assert seen == [(200, None), (200, "requests 100%"), (429, None)]
    status, body = await usage_of(http, gateway, "b2")
    assert body["requests"]["remaining"] == 0 and body["warnings"] == ["requests"]
    assert 0 < body["requests"]["resets_in_seconds"] <= 60
