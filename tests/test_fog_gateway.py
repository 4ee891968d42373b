"""The fog between in-process gateways: real mutual TLS on 127.0.0.1, stand-ins upstream.

Each node is a whole gateway (start_server) with its own certificate
directory and its own Ollama stand-in; they know each other from the
static peer list (mDNS between real namespaces is tests/test_fog_lan.py's).
Clients speak TLS to the phones' port with the fog's CA, as phones do.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fognode.auth.api_keys import entry_for
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pipeline.quotas import USAGE
from fognode.gateway.upstreams.peers import FOG
from fognode.usage.store import Grouping
from tests.conftest import GatewayFactory
from tests.helpers import wait_until
from tests.ollama_standin import DEFAULT_REPLY, OllamaStandIn
from tests.pki import Pki, make_pki, node_certs_dir

USER_KEY = "fnk_" + "u" * 43
ADMIN_KEY = "fnk_" + "a" * 43
KEYS = [entry_for(USER_KEY, "phone-user", admin=False), entry_for(ADMIN_KEY, "ops", admin=True)]
SMALL, OTHER = "llama3.2:1b", "qwen2.5:0.5b"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("fog-pki"))


@dataclass
class Node:
    name: str
    standin: OllamaStandIn
    server: RunningServer
    peer_port: int

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def fog(self) -> Any:
        return self.server.app[FOG]


@pytest.fixture
async def standins() -> AsyncIterator[Callable[..., Awaitable[OllamaStandIn]]]:
    started: list[OllamaStandIn] = []

    async def make(**fields: Any) -> OllamaStandIn:
        standin = OllamaStandIn(**fields)
        await standin.start()
        started.append(standin)
        return standin

    yield make
    for standin in started:
        await standin.stop()


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node(
    make_gateway: GatewayFactory,
    pki: Pki,
    tmp_path: Path,
    standins: Callable[..., Awaitable[OllamaStandIn]],
) -> NodeFactory:
    async def make(
        name: str,
        *,
        models: tuple[str, ...],
        peers: list[int],
        port: int | None = None,
        peer: str = "node",
        certs: Pki | None = None,
        standin: dict[str, Any] | None = None,
        **settings: Any,
    ) -> Node:
        upstream = await standins(models=models, **(standin or {}))
        certs_dir = node_certs_dir(certs or pki, tmp_path / name, name, peer=peer)
        fog_port = port or free_port()
        settings.setdefault("fog_refresh_seconds", 0.2)
        settings.setdefault("node_id", f"node-{name}")
        server = await make_gateway(
            upstream.url,
            tls=True,
            certs_dir=certs_dir,
            auth="firebase",
            api_keys=KEYS,
            api_keys_file=None,
            fog_port=fog_port,
            fog_peers=[f"127.0.0.1:{p}" for p in peers],
            stream_heartbeat_after=30,
            **settings,
        )
        return Node(name, upstream, server, fog_port)

    return make


def client_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.check_hostname = False  # the node's certificate names spezillmfog.local
    return ctx


async def chat(
    http: aiohttp.ClientSession, node: Node, pki: Pki, model: str, *, key: str = USER_KEY
) -> tuple[int, dict[str, str], str]:
    """One streamed chat as a phone sends it; the status, headers and the text."""
    async with http.post(
        f"{node.url}/v1/chat/completions",
        json={"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        ssl=client_context(pki),
    ) as response:
        body = await response.text()
        text = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in body.splitlines()
            if line.startswith("data: {") and json.loads(line[6:]).get("choices")
        )
        return response.status, dict(response.headers), text if response.status == 200 else body


async def members_of(node: Node, count: int) -> None:
    await wait_until(lambda: len(node.fog.current()) == count, f"{node.name}: {count} members")


async def test_a_model_only_a_member_has_is_served_by_it_and_recorded_at_the_entry(
    make_node: NodeFactory, pki: Pki, http: aiohttp.ClientSession
) -> None:
    a_port, b_port = free_port(), free_port()
    a = await make_node("a", models=(SMALL,), peers=[b_port], port=a_port)
    b = await make_node("b", models=(OTHER,), peers=[a_port], port=b_port)
    await members_of(a, 1)
    await members_of(b, 1)

    status, headers, text = await chat(http, a, pki, OTHER)
    assert status == 200, text
    assert text == DEFAULT_REPLY
    assert headers["X-Fognode-Upstream"] == "peer b.local"
    assert headers["X-Fognode-Upstream-Reason"] in ("peer-free", "peer-loaded")
    assert [r.path for r in a.standin.forwarded if r.method == "POST"] == []
    (sent,) = [r for r in b.standin.forwarded if r.method == "POST"]
    # What reached B's Ollama carries no credential, and none of the fog's headers.
    assert "authorization" not in {k.lower() for k in sent.headers}
    assert not any(k.lower().startswith("x-fognode") for k in sent.headers)

    # One record, at the entry node, naming the node that served.
    a_usage, b_usage = a.server.app[USAGE], b.server.app[USAGE]
    await wait_until(lambda: a_usage.writer is not None and a_usage.writer.written >= 1, "record")
    assert a_usage.store is not None and b_usage.store is not None
    totals = await a_usage.store.totals(since=0, until=2e9, by=Grouping.USER)
    assert [(t.uid, t.requests) for t in totals] == [("apikey:phone-user", 1)]
    assert await b_usage.store.totals(since=0, until=2e9, by=Grouping.USER) == []
    async with a_usage.store._db(write=False).execute(  # type: ignore[attr-defined]
        "SELECT node, served_by FROM usage_records"
    ) as cur:
        rows = await cur.fetchall()
    assert [tuple(r) for r in rows] == [(a.fog.options.own_id, b.fog.options.own_id)]


async def test_a_model_no_member_has_is_the_apps_404(
    make_node: NodeFactory, pki: Pki, http: aiohttp.ClientSession
) -> None:
    a_port, b_port = free_port(), free_port()
    a = await make_node("a", models=(SMALL,), peers=[b_port], port=a_port)
    await make_node("b", models=(OTHER,), peers=[a_port], port=b_port)
    await members_of(a, 1)
    status, _, body = await chat(http, a, pki, "phi4:14b")
    assert status == 404
    assert "model 'phi4:14b' not found, try pulling it first" in body
