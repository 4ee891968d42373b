"""Sharing a node with worker processes: one queue by class, one ledger, whichever worker.

Real `fognode serve --workers 2` processes in front of the Ollama stand-in.
Every request goes over real TLS on a connection of its own, so the kernel
spreads them over both workers; the node's log says which worker served
each. The order the stand-in received requests in is the order the node's
one Admission (in the main process) chose.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fognode.auth.api_keys import entry_for, new_key
from tests.support.helpers import STREAMED_CHAT, wait_until
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import make_pki
from tests.support.processes import NodeProcess

KEYS = {name: new_key() for name in ("ops", "clinic", "hold", "b1", "b2", "b3", "b4")}
BATCH = ("hold", "b1", "b2", "b3", "b4")
GUARD = 60.0  # turns a hang into a failure; nothing asserts on time
CHAT = "/v1/chat/completions"
USAGE = "/v1/fognode/usage"


@pytest.fixture
async def node_certs(tmp_path: Path) -> AsyncIterator[tuple[Path, ssl.SSLContext]]:
    pki = make_pki(tmp_path / "certs")
    yield pki.paths.directory, ssl.create_default_context(cafile=str(pki.ca))


def node_settings(standin: OllamaStandIn, pki_dir: Path, **more: str) -> dict[str, str]:
    entries = [entry_for(key, name, admin=name == "ops") for name, key in KEYS.items()]
    return {
        "workers": "2",
        "certs_dir": str(pki_dir),
        "upstream_url": standin.url,
        "api_keys": json.dumps(entries),
        "metrics_public": "true",
        "max_concurrent_requests": "1",
        "per_user_concurrent_requests": "1",
        "quota_tiers": json.dumps({"batch": {"requests_per_minute": 10}}),
        "quota_api_key_tiers": json.dumps({name: "batch" for name in BATCH}),
        "priority_tier_classes": json.dumps({"batch": "batch"}),
        "usage_flush_seconds": "0.05",
        "stream_heartbeat_after": "60",
        **more,
    }


def ask(name: str) -> dict[str, Any]:
    return {**STREAMED_CHAT, "messages": [{"role": "user", "content": name}]}


class Client:
    """Each request on a new connection: the kernel picks the worker."""

    def __init__(self, node: NodeProcess, tls: ssl.SSLContext) -> None:
        self.base = f"https://localhost:{node.port}"
        self.tls = tls

    async def request(
        self, method: str, path: str, name: str, body: dict[str, Any] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        connector = aiohttp.TCPConnector(ssl=self.tls, force_close=True)
        headers = {"Authorization": f"Bearer {KEYS[name]}"}
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.request(method, self.base + path, json=body, headers=headers) as resp,
        ):
            return resp.status, await resp.read(), dict(resp.headers)

    async def metric(self, name: str, labels: str = "") -> float:
        status, text, _ = await self.request("GET", "/metrics", "ops")
        assert status == 200
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                shown = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                if sample.name == name and shown == labels:
                    return sample.value
        raise AssertionError(f"no {name}{{{labels}}} in /metrics")


def served_by(log: str) -> Counter[str]:
    """Chat requests in the access log, by the worker that served them."""
    return Counter(
        m.group(1) for m in re.finditer(r" (w\d+) fognode\.access .*POST /v1/chat/completions", log)
    )


async def test_an_interactive_request_goes_first_whichever_worker_holds_it(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    pki_dir, tls = node_certs
    node = NodeProcess(tmp_path, node_settings(standin, pki_dir))
    await node.start(tls)
    client = Client(node, tls)
    standin.gate = asyncio.Queue()  # the first request holds the one slot
    try:
        async with asyncio.timeout(GUARD):
            tasks = [asyncio.ensure_future(client.request("POST", CHAT, "hold", ask("hold")))]
            await wait_until(lambda: standin.active == 1, "the slot taken", limit=GUARD)
            for queued, name in enumerate(("b1", "b2", "b3", "b4"), 1):
                tasks.append(asyncio.ensure_future(client.request("POST", CHAT, name, ask(name))))
                while await client.metric("fognode_queue_depth") < queued:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert await client.metric("fognode_queue_depth_by_class", "class=batch") == 4
            tasks.append(asyncio.ensure_future(client.request("POST", CHAT, "clinic", ask("c"))))
            while await client.metric("fognode_queue_depth") < 5:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            gate, standin.gate = standin.gate, None
            for _ in range(1000):
                gate.put_nowait(None)
            answers = await asyncio.gather(*tasks)
        assert [status for status, _, _ in answers] == [200] * 6
        order = [json.loads(r.body)["messages"][0]["content"] for r in standin.forwarded]
        assert order == ["hold", "c", "b1", "b2", "b3", "b4"]
        await wait_until(lambda: sum(served_by(node.log()).values()) == 6, "every access line")
        assert set(served_by(node.log())) == {"w1", "w2"}  # both workers held waiting requests
        log = node.log()
        assert log.count("class=batch") == 5 and log.count("class=interactive") == 1
        waited = await client.metric("fognode_admission_wait_seconds_count", "class=batch")
        assert waited == 5
    finally:
        await node.astop()


async def test_budgets_are_the_nodes_whichever_worker_answers(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    pki_dir, tls = node_certs
    node = NodeProcess(
        tmp_path, node_settings(standin, pki_dir, max_concurrent_requests="4", quota_warn_at="0.5")
    )
    await node.start(tls)
    client = Client(node, tls)
    try:
        async with asyncio.timeout(GUARD):
            warned = []
            for _ in range(6):
                status, _, headers = await client.request("POST", CHAT, "b1", ask("b1"))
                assert status == 200
                warned.append(headers.get("x-fognode-quota-warning"))
            assert warned == [None, None, None, None, "requests 50%", "requests 60%"]
            answers = [json.loads((await client.request("GET", USAGE, "b1"))[1]) for _ in range(6)]
        await wait_until(lambda: sum(served_by(node.log()).values()) == 6, "every access line")
        assert set(served_by(node.log())) == {"w1", "w2"}  # both workers counted
        for answer in answers:  # whichever worker answered: the node's figures
            assert answer["requests"]["used"] == 6 and answer["requests"]["remaining"] == 4
            assert answer["class"] == "batch" and answer["tier"] == "batch"
            assert answer["warnings"] == ["requests"]
        status, raw, _ = await client.request("GET", USAGE + "?user=apikey:b1", "ops")
        assert status == 200 and json.loads(raw)["requests"]["used"] == 6
        status, raw, _ = await client.request("GET", USAGE + "?user=apikey:b1", "clinic")
        assert status == 403 and json.loads(raw)["error"]["type"] == "permission_error"
        # Told once, by the main process, however many workers saw it.
        assert node.log().count("apikey:b1 has used") == 1
    finally:
        await node.astop()
