"""The fog between `fognode serve` processes with worker processes, on 127.0.0.1.

The supervisor holds the node's membership service and drain flag; each
worker serves the peer port on its own socket, hands requests over, and
follows what the supervisor tells it. Real processes, real mutual TLS,
Ollama stand-ins as processes; mDNS between namespaces is tests/system/test_fog_lan.py's.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fognode.auth.api_keys import entry_for
from tests.support.fog import ADMIN_KEY, OTHER, SMALL, USER_KEY, chat, client_context
from tests.support.helpers import free_port
from tests.support.ollama_standin import DEFAULT_REPLY
from tests.support.pki import Pki, node_certs_dir
from tests.support.processes import NodeProcess, Process

pytestmark = pytest.mark.slow


class Fleet:
    def __init__(self, pki: Pki, tmp: Path) -> None:
        self.pki, self.tmp = pki, tmp
        self.procs: list[Process] = []
        self.nodes: list[NodeProcess] = []

    async def node(
        self, name: str, models: tuple[str, ...], peer_port: int, peers: list[int], workers: int
    ) -> NodeProcess:
        upstream = free_port()
        standin = Process(
            [
                sys.executable,
                "-m",
                "tests.support.ollama_standin",
                "--port",
                str(upstream),
                "--models",
                ",".join(models),
            ]
        )
        self.procs.append(standin)
        work = self.tmp / name
        work.mkdir()
        (work / "no-api-keys").write_text("")
        node = NodeProcess(
            work,
            {
                "upstream_url": f"http://127.0.0.1:{upstream}",
                "certs_dir": str(node_certs_dir(self.pki, work / "certs", name)),
                "workers": str(workers),
                "api_keys": ",".join(
                    [
                        entry_for(USER_KEY, "phone-user", admin=False),
                        entry_for(ADMIN_KEY, "ops", admin=True),
                    ]
                ),
                "api_keys_file": str(work / "no-api-keys"),
                "node_id": f"node-{name}",
                "fog": "on",
                "fog_port": str(peer_port),
                "fog_peers": ",".join(f"127.0.0.1:{p}" for p in peers),
                "fog_refresh_seconds": "0.3",
            },
        )
        self.nodes.append(node)
        await node.start(client_context(self.pki))
        return node

    async def stop(self) -> None:
        for node in self.nodes:
            await node.astop()
        for proc in self.procs:
            proc.stop()


@pytest.fixture
async def fleet(fog_pki: Pki, tmp_path: Path) -> AsyncIterator[Fleet]:
    made = Fleet(fog_pki, tmp_path)
    yield made
    await made.stop()


async def admin(
    http: aiohttp.ClientSession, node: NodeProcess, fog_pki: Pki, path: str, body: Any = None
) -> Any:
    method = http.post if body is not None else http.get
    async with method(
        f"{node.url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ssl=client_context(fog_pki),
    ) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def members(
    http: aiohttp.ClientSession, node: NodeProcess, fog_pki: Pki, count: int
) -> dict[str, Any]:
    for _ in range(200):
        view = await admin(http, node, fog_pki, "/admin/fog")
        if len(view["members"]) == count:
            return dict(view)
        await asyncio.sleep(0.1)
    raise AssertionError(f"never {count} members: {view}\n{node.log()}")


async def test_workers_hand_over_serve_the_peer_port_and_follow_the_drain(
    fleet: Fleet, fog_pki: Pki, http: aiohttp.ClientSession
) -> None:
    a_port, b_port = free_port(), free_port()
    a = await fleet.node("a", (SMALL,), a_port, [b_port], workers=2)
    b = await fleet.node("b", (OTHER, SMALL), b_port, [a_port], workers=2)
    view = await members(http, a, fog_pki, 1)
    assert view["members"][0]["identity"] == "b.local"
    await members(http, b, fog_pki, 1)

    # Every worker of a hands over what only b has (the kernel spreads the
    # connections over a's workers; each follows the supervisor's members).
    for _ in range(8):
        status, headers, text = await chat(http, a, fog_pki, OTHER)
        assert status == 200 and text == DEFAULT_REPLY
        assert headers["X-Fognode-Upstream"] == "peer b.local"

    # Drain through any worker: the supervisor holds the flag, every worker follows.
    assert (await admin(http, a, fog_pki, "/admin/drain", {"draining": True}))["draining"] is True
    for _ in range(6):
        status, headers, _ = await chat(http, a, fog_pki, SMALL)
        assert status == 200 and headers["X-Fognode-Upstream"] == "peer b.local"
    async with http.get(f"{a.url}/readyz", ssl=client_context(fog_pki)) as response:
        assert response.status == 503 and (await response.json())["status"] == "draining"
    # b hears it from a's state, and hands a nothing.
    for _ in range(100):
        view = await admin(http, b, fog_pki, "/admin/fog")
        if view["members"] and view["members"][0]["state"]["draining"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"b never heard that a drains: {view}")
    assert (await admin(http, a, fog_pki, "/admin/drain", {"draining": False}))["draining"] is False
    for _ in range(4):
        status, headers, _ = await chat(http, a, fog_pki, SMALL)
        assert status == 200 and "X-Fognode-Upstream" not in headers
