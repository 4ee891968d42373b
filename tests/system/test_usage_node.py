"""Usage accounting in a real `fognode serve` process: killed with SIGKILL under
load and started again, read by `fognode usage` and `GET /admin/usage`, and
sharing budgets through a real PostgreSQL server.

The node's store is read directly by the test (a second SQLite connection,
as `fognode usage` makes), which is how the test knows which batches were
committed before the kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import aiosqlite
import pytest

from fognode.auth.api_keys import entry_for, new_key
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pipeline.quotas import USAGE
from fognode.usage.sqlite_store import SqliteStore
from tests.support.gateway import GatewayFactory
from tests.support.helpers import CHAT, STREAMED_CHAT, wait_until
from tests.support.ollama_standin import OllamaStandIn
from tests.support.postgres import PostgresServer
from tests.support.processes import NodeProcess

WORDS = len(OllamaStandIn().reply.split(" "))
FLUSH_RECORDS = 10
LOAD_SETTINGS = {
    "tls": "false",
    "auth": "none",
    "usage_flush_records": str(FLUSH_RECORDS),
    # Batches are written when FLUSH_RECORDS are waiting, never by the clock:
    # what waits at a given moment is known exactly.
    "usage_flush_seconds": "600",
    "max_concurrent_requests": "64",
    "per_user_concurrent_requests": "64",
}


def usage_file(node: NodeProcess) -> Path:
    return Path(node.env["XDG_DATA_HOME"]) / "fognode" / "usage.sqlite3"


async def stored(path: Path) -> dict[str, tuple[str, int, int]]:
    """request id -> (outcome, prompt, completion), read as another process would."""
    async with (
        aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as db,
        db.execute(
            "SELECT request_id, outcome, prompt_tokens, completion_tokens FROM usage_records"
        ) as cur,
    ):
        found = {row[0]: (row[1], row[2], row[3]) for row in await cur.fetchall()}
    return found


class Load:
    """Clients sending requests one after another until stopped; what completed."""

    def __init__(self, url: str, prefix: str, clients: int = 8) -> None:
        self.url = url
        self.prefix = prefix
        self.clients = clients
        self.started: set[str] = set()
        self.completed: set[str] = set()
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []

    async def _client(self, index: int) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                rid = f"{self.prefix}-{next(self._seq)}"
                path, body = (
                    ("/v1/chat/completions", STREAMED_CHAT)
                    if index % 2
                    else ("/api/chat", {**CHAT, "stream": False})
                )
                self.started.add(rid)
                try:
                    async with http.post(
                        self.url + path, json=body, headers={"X-Request-ID": rid}
                    ) as resp:
                        data = await resp.read()
                except aiohttp.ClientError:
                    return  # the node is gone
                if resp.status == 503 and b'"node_restarting"' in data:
                    # A worker answering in the moment between the main
                    # process's death and its own: gone too, said cleanly.
                    return
                assert resp.status == 200, data
                assert data.endswith((b"data: [DONE]\n\n", b"}")), data[-50:]
                self.completed.add(rid)

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.mark.slow
async def test_kill_9_during_load_then_restart_keeps_every_committed_batch(
    standin: OllamaStandIn, tmp_path: Path
) -> None:
    standin.token_delay = 0.002
    settings = {**LOAD_SETTINGS, "upstream_url": standin.url}
    node = NodeProcess(tmp_path, settings)
    await node.start()
    path = usage_file(node)
    try:
        # 1. Load, then SIGKILL at an arbitrary moment of it.
        load = Load(node.url, "r1")
        load.start()
        await wait_until(lambda: len(load.completed) >= 150, "150 requests answered", 120)
        seen = await stored(path)  # committed before the kill
        assert node.alive
        await node.astop(signal.SIGKILL)
        await load.stop()
        after = await stored(path)
        assert set(seen) <= set(after), "a committed batch was lost"
        assert set(after) <= load.started, "a record of a request nobody sent"
        lost = load.completed - set(after)
        print(f"\nround 1: {len(load.completed)} answered, {len(after)} stored, {len(lost)} lost")

        # 2. Restart: the node opens the store and carries on. Load again, pause
        # it (every stream waits for its next token), note what waits for a batch,
        # and kill mid-stream.
        await node.start()
        async with aiohttp.ClientSession() as http:
            load = Load(node.url, "r2")
            load.start()
            await wait_until(lambda: len(load.completed) >= 97, "97 requests answered", 120)
            standin.gate = asyncio.Queue()  # the load's streams stop where they are
            await _quiet(load)
            # A few more answered requests (past the gate), so that a part of a
            # batch waits: 3 records, whatever the load left.
            standin.gate = None
            for n in range((3 - await pending(http, node)) % FLUSH_RECORDS):
                await answered_chat(http, node, f"r2-extra-{n}")
                load.completed.add(f"r2-extra-{n}")
            waiting = await pending(http, node)
            before = await stored(path)
            in_flight = load.started - load.completed
            assert in_flight and standin.active > 0  # streams are open at the kill
            await node.astop(signal.SIGKILL)
            await load.stop()
        after = await stored(path)
        answered = set(load.completed)
        stored_now = {rid for rid in after if rid.startswith("r2-")}
        assert set(before) == set(after), "the kill changed what was committed"
        # Exactly the records that waited for their batch are lost, and no more.
        assert waiting == 3
        assert len(answered - stored_now) == waiting
        assert stored_now <= answered  # none of the streams cut by the kill
        print(f"round 2: {len(answered)} answered, {waiting} waiting for a batch at the kill")

        # 3. A readable, sound file; the node starts on it again and records on.
        check = SqliteStore(path)
        await check.open()
        try:
            assert await check.integrity_check() == "ok"
        finally:
            await check.close()
        await node.start()
        async with aiohttp.ClientSession() as http:
            for n in range(FLUSH_RECORDS + 3):
                await answered_chat(http, node, f"r3-{n}")
        # A clean stop writes what waits (the last 3, short of a batch).
        assert await node.astop() == 0
        final = await stored(path)
        assert {f"r3-{n}" for n in range(FLUSH_RECORDS + 3)} <= set(final)
        # Every record's figures are the upstream's own.
        assert {(p, c) for _, p, c in final.values()} <= {(5, WORDS), (1, WORDS)}
        assert {outcome for outcome, *_ in final.values()} == {"completed"}
    finally:
        await node.astop()


async def answered_chat(http: aiohttp.ClientSession, node: NodeProcess, rid: str) -> None:
    async with http.post(
        f"{node.url}/api/chat", json={**CHAT, "stream": False}, headers={"X-Request-ID": rid}
    ) as resp:
        assert resp.status == 200
        await resp.read()


async def pending(http: aiohttp.ClientSession, node: NodeProcess) -> int:
    """Records the node holds that wait for their batch (GET /admin/usage)."""
    async with http.get(f"{node.url}/admin/usage") as resp:
        count: int = (await resp.json())["pending_records"]
    return count


async def _quiet(load: Load) -> None:
    """Wait until no request has completed for a while (the gate holds them all)."""
    last = -1
    while len(load.completed) != last:
        last = len(load.completed)
        await asyncio.sleep(0.3)


# --- the operator's views ---------------------------------------------------------------


async def fognode(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """The `fognode` command as an operator runs it: exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fognode.gateway.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def fognode_usage(env: dict[str, str], *args: str) -> Any:
    status, out, err = await fognode(env, "usage", "--json", *args)
    assert status == 0, err
    return json.loads(out)


async def test_admin_usage_and_fognode_usage_agree_on_a_running_node(
    standin: OllamaStandIn, tmp_path: Path
) -> None:
    admin, phone = new_key(), new_key()
    keys = ",".join([entry_for(admin, "ops", admin=True), entry_for(phone, "phone", admin=False)])
    node = NodeProcess(
        tmp_path,
        {
            "tls": "false",
            "upstream_url": standin.url,
            "api_keys": keys,
            "usage_flush_seconds": "0.05",
        },
    )
    await node.start()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {phone}"}) as http:
            for body in (STREAMED_CHAT, CHAT, {**CHAT, "model": "qwen2.5:0.5b"}):
                async with http.post(f"{node.url}/v1/chat/completions", json=body) as resp:
                    assert resp.status == 200
                    await resp.read()  # leaving unread would be a client that went away
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin}"}) as http:
            for _ in range(200):
                async with http.get(f"{node.url}/admin/usage") as resp:
                    report = await resp.json()
                if report["users"] and report["users"][0]["requests"] == 3:
                    break
                await asyncio.sleep(0.05)
        assert report["users"] == [
            {
                "uid": "apikey:phone",
                "requests": 3,
                "rejected": 0,
                "partial": 0,
                "prompt_tokens": 3,
                "completion_tokens": 3 * WORDS,
                "total_tokens": 3 + 3 * WORDS,
            }
        ]
        # The operator's command reads the same store, the node still running.
        cli = await fognode_usage(node.env)
        assert cli["totals"] == report["users"]
        by_model = await fognode_usage(node.env, "--by", "model", "--user", "apikey:phone")
        assert [(t["model"], t["requests"]) for t in by_model["totals"]] == [
            ("llama3.2:1b", 2),
            ("qwen2.5:0.5b", 1),
        ]
        assert [(m["model"], m["requests"]) for m in report["models"]] == [
            ("llama3.2:1b", 2),
            ("qwen2.5:0.5b", 1),
        ]
        _, table, _ = await fognode(node.env, "usage")
        assert "apikey:phone" in table and "PROMPT" in table
    finally:
        await node.astop()
    assert phone not in node.log() and admin not in node.log()


async def test_nodes_sharing_postgresql_share_one_budget(
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    postgres_server: PostgresServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = await postgres_server.new_database()
    # The server trusts local connections; a password in the URL must still never show.
    secret_url = url.replace("fognode@", "fognode:pg-s3cret-pw@")
    key = new_key()
    per_request = 5 + WORDS
    shared: dict[str, Any] = {
        "usage_database_url": secret_url,
        "usage_flush_seconds": 0.02,
        "auth": "firebase",
        "api_keys": [entry_for(key, "lab", admin=False)],
        "api_keys_file": None,
        "quota_tokens_per_day": 3 * per_request,
    }
    node_a = await make_gateway(standin.url, node_id="node-a", **shared)
    node_b = await make_gateway(standin.url, node_id="node-b", **shared)
    headers = {"Authorization": f"Bearer {key}"}
    body = {**CHAT, "stream": False}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def ask(node_url: str) -> int:
            async with http.post(f"{node_url}/api/chat", json=body) as resp:
                await resp.read()
                return resp.status

        assert [await ask(node_a.url) for _ in range(2)] == [200, 200]
        # Node B sees node A's records once they are flushed (flush_seconds).
        await flushed(node_a)
        assert await ask(node_b.url) == 200  # the third: the budget is now spent
        await flushed(node_b)
        assert await ask(node_a.url) == 429
        assert await ask(node_b.url) == 429

    env = {**os.environ, "FOGNODE_USAGE_DATABASE_URL": secret_url, "XDG_DATA_HOME": str(tmp_path)}
    report = await fognode_usage(env)
    assert [(t["uid"], t["requests"], t["rejected"]) for t in report["totals"]] == [
        ("apikey:lab", 3, 2)
    ]
    _, out, err = await fognode(env, "config")
    assert json.loads(out)["usage_database_url"] == "***"
    assert "pg-s3cret-pw" not in out + err
    assert "pg-s3cret-pw" not in caplog.text


async def flushed(gateway: RunningServer) -> None:
    writer = gateway.app[USAGE].writer
    assert writer is not None
    await wait_until(lambda: not writer.pending(), "records written")
