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
import os
import re
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fognode.auth.api_keys import entry_for, new_key
from fognode.moments import iso_utc
from tests.support.helpers import STREAMED_CHAT, wait_until
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import make_pki
from tests.support.processes import FOGNODE, NodeProcess

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
        self.keys = dict(KEYS)  # and the keys a test makes while the node runs

    async def request(
        self, method: str, path: str, name: str, body: dict[str, Any] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        connector = aiohttp.TCPConnector(ssl=self.tls, force_close=True)
        headers = {"Authorization": f"Bearer {self.keys[name]}"}
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


def served_by(log: str, route: str = f"POST {CHAT}") -> Counter[str]:
    """Requests in the access log (chats unless said), by the worker that served them."""
    return Counter(
        m.group(1) for m in re.finditer(rf" (w\d+) fognode\.access .*{re.escape(route)}[\" ?]", log)
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
            # Six chats, and more (to the budget of ten) until the kernel has
            # given both workers one: six alone all go to one worker once in 32.
            while len(warned) < 6 or (len(served_by(node.log())) < 2 and len(warned) < 10):
                status, _, headers = await client.request("POST", CHAT, "b1", ask("b1"))
                assert status == 200
                warned.append(headers.get("x-fognode-quota-warning"))
                sent = len(warned)
                await wait_until(
                    lambda n=sent: sum(served_by(node.log()).values()) == n, "every access line"
                )
            # The warning share is 50% of 10 requests a minute: from the fifth on.
            assert warned == [None] * 4 + [f"requests {n * 10}%" for n in range(5, sent + 1)]
            answers = [json.loads((await client.request("GET", USAGE, "b1"))[1]) for _ in range(6)]
        assert set(served_by(node.log())) == {"w1", "w2"}  # both workers counted
        for answer in answers:  # whichever worker answered: the node's figures
            assert answer["requests"]["used"] == sent
            assert answer["requests"]["remaining"] == 10 - sent
            assert answer["class"] == "batch" and answer["tier"] == "batch"
            assert answer["warnings"] == ["requests"]
        status, raw, _ = await client.request("GET", USAGE + "?user=apikey:b1", "ops")
        assert status == 200 and json.loads(raw)["requests"]["used"] == sent
        status, raw, _ = await client.request("GET", USAGE + "?user=apikey:b1", "clinic")
        assert status == 403 and json.loads(raw)["error"]["type"] == "permission_error"
        # Told once, by the main process, however many workers saw it.
        assert node.log().count("apikey:b1 has used") == 1
    finally:
        await node.astop()


def apikey(key_file: Path, *args: str) -> str:
    """`fognode apikey ...` as the operator runs it, on the node's key file."""
    env = {
        **os.environ,
        "FOGNODE_API_KEYS_FILE": str(key_file),
        "FOGNODE_QUOTA_TIERS": json.dumps({"batch": {"requests_per_minute": 100}}),
    }
    out = subprocess.run(
        [*FOGNODE, "apikey", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


async def test_scoped_keys_hold_on_every_worker_and_a_revoke_reaches_them_all(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    pki_dir, tls = node_certs
    key_file = tmp_path / "api-keys"
    node = NodeProcess(
        tmp_path,
        node_settings(
            standin,
            pki_dir,
            max_concurrent_requests="4",
            api_keys_file=str(key_file),
            api_keys_check_interval="0.2",
        ),
    )
    await node.start(tls)
    client = Client(node, tls)
    made = json.loads(
        apikey(
            key_file,
            "create",
            "study",
            "--models",
            "llama3.2:1b",
            "--expires",
            "30d",
            "--tier",
            "batch",
            "--class",
            "batch",
            "--json",
        )
    )
    soon = time.time() + 10
    trial = json.loads(apikey(key_file, "create", "trial", "--expires", iso_utc(soon), "--json"))[
        "key"
    ]
    client.keys.update(study=made["key"], trial=trial)
    listed = apikey(key_file, "list")
    assert "llama3.2:1b" in listed and "batch" in listed and "trial" in listed
    assert made["key"] not in listed and trial not in listed
    try:
        async with asyncio.timeout(GUARD):
            await wait_until_status(client, "study", 200)
            n = 8  # each on a new connection: the kernel spreads them over both workers
            inside = [await client.request("POST", CHAT, "study", ask("in")) for _ in range(n)]
            outside = [
                await client.request("POST", CHAT, "study", {**ask("out"), "model": "qwen2.5:0.5b"})
                for _ in range(n)
            ]
            lists = [await client.request("GET", "/v1/models", "study") for _ in range(n)]
            usage = [await client.request("GET", USAGE, "study") for _ in range(n)]
            assert [status for status, _, _ in inside] == [200] * n
            for status, raw, _ in outside:
                error = json.loads(raw)["error"]
                assert status == 403 and error["code"] == "model_not_in_scope"
                assert "llama3.2:1b" in error["message"] and made["key"] not in raw.decode()
            for _, raw, _ in lists:
                assert [m["id"] for m in json.loads(raw)["data"]] == ["llama3.2:1b"]
            for _, raw, _ in usage:
                answer = json.loads(raw)
                assert (answer["tier"], answer["class"]) == ("batch", "batch")
            await wait_until(
                lambda: len(served_by(node.log(), "GET /v1/models")) == 2, "both workers listed"
            )
            assert set(served_by(node.log())) == {"w1", "w2"}

            apikey(key_file, "revoke", "study")
            await wait_until_status(client, "study", 401)
            after = [await client.request("GET", "/v1/models", "study") for _ in range(n)]
            assert [status for status, _, _ in after] == [401] * n  # on every worker at once
            assert (await client.request("GET", "/v1/models", "trial"))[0] == 200

            while time.time() < soon:  # noqa: ASYNC110 (the key's own time, not an event)
                await asyncio.sleep(0.1)
            expired = [await client.request("GET", "/v1/models", "trial") for _ in range(n)]
            for status, raw, _ in expired:
                assert status == 401 and json.loads(raw)["error"]["code"] == "api_key_expired"
            await wait_until(
                lambda: served_by(node.log(), "GET /v1/models").total() >= 3 * n + 3,
                "every access line",
            )
        log = node.log()
        assert made["key"] not in log and trial not in log
    finally:
        await node.astop()


async def wait_until_status(client: Client, name: str, wanted: int) -> None:
    """Until the node follows its key file (the change is seen within its interval)."""
    while (await client.request("GET", "/v1/models", name))[0] != wanted:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
