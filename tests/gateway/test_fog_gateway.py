"""The fog between in-process gateways: real mutual TLS on 127.0.0.1, stand-ins upstream.

Each node is a whole gateway (start_server) with its own certificate
directory and its own Ollama stand-in; they know each other from the
static peer list (mDNS between real namespaces is tests/system/test_fog_lan.py's).
Clients speak TLS to the phones' port with the fog's CA, as phones do.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fognode.auth.api_keys import entry_for, new_key
from fognode.fog.state import PeerState
from fognode.gateway.core.drain import DRAIN
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pipeline.quotas import USAGE
from fognode.gateway.telemetry.stats import STATS
from fognode.gateway.upstreams.peers import FOG
from fognode.gateway.upstreams.pool import UPSTREAM
from fognode.usage.store import Grouping
from tests.support.fog import ADMIN_KEY, OTHER, SMALL, USER_KEY, chat, client_context
from tests.support.gateway import GatewayFactory
from tests.support.helpers import free_port, wait_until
from tests.support.ollama_standin import DEFAULT_REPLY, OllamaStandIn
from tests.support.pki import Pki, make_pki, node_certs_dir

KEYS = [entry_for(USER_KEY, "phone-user", admin=False), entry_for(ADMIN_KEY, "ops", admin=True)]


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
    fog_pki: Pki,
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
        loaded: tuple[str, ...] = (),
        **settings: Any,
    ) -> Node:
        upstream = await standins(models=models, **(standin or {}))
        upstream.load(*loaded)
        certs_dir = node_certs_dir(certs or fog_pki, tmp_path / name, name, peer=peer)
        fog_port = port or free_port()
        settings.setdefault("fog", None)  # on: it has a node certificate (conftest says off)
        settings.setdefault("fog_refresh_seconds", 0.2)
        settings.setdefault("node_id", f"node-{name}")
        settings.setdefault("api_keys", KEYS)
        server = await make_gateway(
            upstream.url,
            tls=True,
            certs_dir=certs_dir,
            auth="firebase",
            api_keys_file=None,
            fog_port=fog_port,
            fog_peers=[f"127.0.0.1:{p}" for p in peers],
            stream_heartbeat_after=30,
            **settings,
        )
        return Node(name, upstream, server, fog_port)

    return make


async def admin_get(http: aiohttp.ClientSession, node: Node, fog_pki: Pki, path: str) -> str:
    async with http.get(
        f"{node.url}{path}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ssl=client_context(fog_pki),
    ) as response:
        assert response.status == 200, path
        return await response.text()


async def members_of(node: Node, count: int) -> None:
    await wait_until(lambda: len(node.fog.current()) == count, f"{node.name}: {count} members")


async def test_a_model_only_a_member_has_is_served_by_it_and_recorded_at_the_entry(
    make_node: NodeFactory,
    fog_pki: Pki,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a_port, b_port = free_port(), free_port()
    a = await make_node("a", models=(SMALL,), peers=[b_port], port=a_port)
    b = await make_node("b", models=(OTHER,), peers=[a_port], port=b_port)
    await members_of(a, 1)
    await members_of(b, 1)

    caplog.set_level(logging.INFO, logger="fognode.access")
    status, headers, text = await chat(http, a, fog_pki, OTHER)
    assert status == 200, text
    assert text == DEFAULT_REPLY
    assert headers["X-Fognode-Upstream"] == "peer b.local"
    # Both access lines carry the one request id; the member's names the entry.
    rid = headers["X-Request-ID"]
    lines = [r for r in caplog.records if r.name == "fognode.access" and "POST" in r.getMessage()]
    entry_line, member_line = (
        [r.getMessage() for r in lines if f"via={a.fog.options.own_id}" not in r.getMessage()],
        [r.getMessage() for r in lines if f"via={a.fog.options.own_id}" in r.getMessage()],
    )
    assert len(member_line) == 1 and len(entry_line) == 1, [r.getMessage() for r in lines]
    assert all(getattr(r, "fields", {}).get("request_id") == rid for r in lines)
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

    # Seeing it: /metrics by member and reason, both ways; the status page's Fog card.
    reason = headers["X-Fognode-Upstream-Reason"]
    assert f'fognode_fog_forwarded_total{{peer="b.local",reason="{reason}"}} 1.0' in (
        await admin_get(http, a, fog_pki, "/metrics")
    )
    assert 'fognode_fog_received_total{peer="a.local"} 1.0' in await admin_get(
        http, b, fog_pki, "/metrics"
    )
    page = await admin_get(http, a, fog_pki, "/")
    card = page[page.index('id="fog"') :]
    assert "<b>b.local</b>" in card and 'data-standing="member"' in card
    assert '<b class="member-handed">1</b>' in card
    assert '<b class="member-received">0</b>' in card
    assert OTHER in card


async def test_a_handed_over_request_waits_in_the_class_its_entry_decided(
    make_node: NodeFactory, fog_pki: Pki, http: aiohttp.ClientSession
) -> None:
    """The caller's class is decided where their credential is known (the
    entry), and travels with the entry's assertion of who they are."""
    a_port, b_port, c_port = free_port(), free_port(), free_port()
    batch = {
        "quota_tiers": {"batch": {}},
        "quota_api_key_tiers": {"phone-user": "batch"},
        "priority_tier_classes": {"batch": "batch"},
    }
    a = await make_node("a", models=(SMALL,), peers=[b_port, c_port], port=a_port, **batch)
    b = await make_node("b", models=(OTHER,), peers=[a_port], port=b_port)
    await members_of(a, 1)
    status, _, text = await chat(http, a, fog_pki, OTHER)
    assert status == 200, text
    metrics = await admin_get(http, b, fog_pki, "/metrics")
    assert 'fognode_admission_wait_seconds_count{class="batch"} 1.0' in metrics
    assert 'fognode_admission_wait_seconds_count{class="interactive"} 0.0' in metrics
    # A member that has no such class queues it in its own default class.
    await b.server.stop()
    c = await make_node(
        "c",
        models=(OTHER,),
        peers=[a_port],
        port=c_port,
        priority_classes=["urgent", "normal"],
        priority_default_class="normal",
    )
    await wait_until(lambda: [m.identity for m in a.fog.current()] == ["c.local"], "c joined")
    status, _, text = await chat(http, a, fog_pki, OTHER)
    assert status == 200, text
    metrics = await admin_get(http, c, fog_pki, "/metrics")
    assert 'fognode_admission_wait_seconds_count{class="normal"} 1.0' in metrics


async def test_a_scoped_key_is_decided_at_the_entry_and_its_class_travels(
    make_node: NodeFactory, fog_pki: Pki, http: aiohttp.ClientSession
) -> None:
    """The key is the entry node's (a member does not know it): the entry
    refuses a model outside its scope before any hand-over, and hands over a
    model in it with the key's class in its assertion of the caller."""
    study = new_key()
    scoped = entry_for(study, "study", admin=False, models=(OTHER,), priority="batch")
    a_port, b_port = free_port(), free_port()
    a = await make_node("a", models=(SMALL,), peers=[b_port], port=a_port, api_keys=[*KEYS, scoped])
    b = await make_node("b", models=(OTHER,), peers=[a_port], port=b_port)
    await members_of(a, 1)
    status, _, text = await chat(http, a, fog_pki, SMALL, key=study)
    assert status == 403 and "model_not_in_scope" in text and study not in text
    status, _, text = await chat(http, a, fog_pki, OTHER, key=study)
    assert status == 200, text
    assert [r.path for r in b.standin.forwarded] == ["/v1/chat/completions"]
    assert not a.standin.forwarded
    metrics = await admin_get(http, b, fog_pki, "/metrics")
    assert 'fognode_admission_wait_seconds_count{class="batch"} 1.0' in metrics


async def test_a_model_no_member_has_is_the_apps_404(
    make_node: NodeFactory, fog_pki: Pki, http: aiohttp.ClientSession
) -> None:
    a_port, b_port = free_port(), free_port()
    a = await make_node("a", models=(SMALL,), peers=[b_port], port=a_port)
    await make_node("b", models=(OTHER,), peers=[a_port], port=b_port)
    await members_of(a, 1)
    status, _, body = await chat(http, a, fog_pki, "phi4:14b")
    assert status == 404
    assert "model 'phi4:14b' not found, try pulling it first" in body


async def test_a_request_that_would_wait_here_goes_to_a_member_that_can_start_it(
    make_node: NodeFactory, fog_pki: Pki, http: aiohttp.ClientSession
) -> None:
    a_port, b_port = free_port(), free_port()
    gate: asyncio.Queue[None] = asyncio.Queue()
    a = await make_node(
        "a",
        models=(SMALL,),
        peers=[b_port],
        port=a_port,
        max_concurrent_requests=1,
        standin={"gate": gate},
    )
    await make_node("b", models=(SMALL,), peers=[a_port], port=b_port, loaded=(SMALL,))
    await members_of(a, 1)
    # The one slot here is taken by a stream that waits for the test.
    first = asyncio.create_task(chat(http, a, fog_pki, SMALL))
    await wait_until(lambda: a.standin.active == 1, "the first stream runs at a")
    a.server.app[STATS].first_token = 0.1
    # Members are asked again with the slot taken (a's expected wait is known).
    status, headers, text = await chat(http, a, fog_pki, SMALL)
    assert status == 200 and text == DEFAULT_REPLY
    assert headers["X-Fognode-Upstream"] == "peer b.local"
    assert headers["X-Fognode-Upstream-Reason"] == "peer-loaded"
    for _ in range(100):  # every chunk of the first stream may go now
        gate.put_nowait(None)
    status, headers, text = await first
    assert status == 200 and text == DEFAULT_REPLY
    assert "X-Fognode-Upstream" not in headers  # served here: one upstream, no choice


async def test_members_that_decline_before_the_first_byte_send_the_request_back_here(
    make_node: NodeFactory, fog_pki: Pki, http: aiohttp.ClientSession
) -> None:
    a_port, b_port = free_port(), free_port()
    a = await make_node("a", models=(SMALL, OTHER), peers=[b_port], port=a_port)
    b = await make_node("b", models=(OTHER,), peers=[a_port], port=b_port)
    await members_of(a, 1)
    await a.server.app[DRAIN].set(True)  # a hands everything it can to members
    await b.standin.stop()  # ... and b's upstream is gone: b answers 502
    status, headers, text = await chat(http, a, fog_pki, OTHER)
    assert status == 200 and text == DEFAULT_REPLY
    assert [r.path for r in a.standin.forwarded if r.method == "POST"] == ["/v1/chat/completions"]
    assert "peer" not in headers.get("X-Fognode-Upstream", "")
    assert a.fog.current() == []  # out here until the service hears from it again


async def test_a_draining_node_hands_new_requests_to_members(
    make_node: NodeFactory, fog_pki: Pki, http: aiohttp.ClientSession
) -> None:
    a_port, b_port = free_port(), free_port()
    a = await make_node("a", models=(SMALL,), peers=[b_port], port=a_port)
    b = await make_node("b", models=(SMALL,), peers=[a_port], port=b_port)
    await members_of(a, 1)
    await members_of(b, 1)
    async with http.post(
        f"{a.url}/admin/drain",
        json={"draining": True},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ssl=client_context(fog_pki),
    ) as response:
        assert response.status == 200
        assert (await response.json())["draining"] is True
    async with http.get(f"{a.url}/readyz", ssl=client_context(fog_pki)) as response:
        assert response.status == 503
        assert (await response.json())["status"] == "draining"
    for _ in range(3):
        status, headers, text = await chat(http, a, fog_pki, SMALL)
        assert status == 200 and text == DEFAULT_REPLY
        assert headers["X-Fognode-Upstream"] == "peer b.local"
    assert not [r for r in a.standin.forwarded if r.method == "POST"]
    # b learns that a drains, and hands it nothing.
    await wait_until(
        lambda: any(m.state.draining for m in b.fog.current()), "b hears that a drains"
    )
    assert b.fog.route(SMALL, here=None) == []
    async with http.post(
        f"{a.url}/admin/drain",
        json={"draining": False},
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ssl=client_context(fog_pki),
    ) as response:
        assert (await response.json())["draining"] is False
    status, headers, _ = await chat(http, a, fog_pki, SMALL)
    assert status == 200 and "X-Fognode-Upstream" not in headers


async def test_the_phone_leaving_stops_the_members_upstream(
    make_node: NodeFactory, fog_pki: Pki, http: aiohttp.ClientSession
) -> None:
    a_port, b_port = free_port(), free_port()
    a = await make_node("a", models=(SMALL,), peers=[b_port], port=a_port)
    b = await make_node(
        "b", models=(OTHER,), peers=[a_port], port=b_port, standin={"token_delay": 0.2}
    )
    await members_of(a, 1)
    async with http.post(
        f"{a.url}/v1/chat/completions",
        json={"model": OTHER, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {USER_KEY}"},
        ssl=client_context(fog_pki),
    ) as response:
        assert response.status == 200
        await response.content.readline()  # the first event: b generates
    # The phone is gone (its connection closed): b's upstream stops.
    await asyncio.wait_for(b.standin.cancel_event.wait(), 10)
    assert b.standin.cancelled == 1 and b.standin.completed == 0


class Impostor:
    """A server on a peer port with what every node of the fog has: its CA and
    its server certificate (not a node certificate). It answers a member's
    state, copied, and records any request it gets."""

    def __init__(self, pki: Pki, state: bytes) -> None:
        self.pki, self.state = pki, state
        self.requests: list[str] = []
        self.runner: web.AppRunner | None = None

    async def start(self, port: int) -> None:
        async def record(request: web.Request) -> web.Response:
            self.requests.append(f"{request.method} {request.path}")
            return web.Response(body=self.state, content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki.ca))
        ctx.load_cert_chain(str(self.pki.paths.server_cert), str(self.pki.paths.server_key))
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=ctx).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def test_no_one_but_a_member_gets_anything_on_the_peer_port(
    make_node: NodeFactory, fog_pki: Pki, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    a_port, rogue_port, plain_port = free_port(), free_port(), free_port()
    a = await make_node("a", models=(SMALL,), peers=[rogue_port, plain_port], port=a_port)
    # Another fog's node (a whole fognode, its own CA) ...
    other = make_pki(tmp_path / "other-fog")
    rogue = await make_node("rogue", models=(OTHER,), peers=[a_port], port=rogue_port, certs=other)
    # ... and a server with the server certificate of a's own fog, saying it has OTHER.
    copied = PeerState(
        node="plain", capacity=4, active=0, queued=0, free_slots=4, models=(OTHER,), loaded=(OTHER,)
    ).to_json()
    impostor = Impostor(fog_pki, copied)
    await impostor.start(plain_port)
    try:
        await wait_until(
            lambda: sorted(c.standing.value for c in a.fog.candidates) == ["refused", "refused"],
            "a refuses both",
        )
        # The other fog's node finds a no member of its own fog either.
        await wait_until(
            lambda: [c.standing.value for c in rogue.fog.candidates] == ["refused"],
            "rogue refuses a",
        )
        assert rogue.fog.current() == []
        # A request for the model only they have: the app's 404 here, nothing sent to them.
        status, _, body = await chat(http, a, fog_pki, OTHER)
        assert status == 404 and "not found, try pulling it first" in body
        assert not [r for r in rogue.standin.forwarded if r.method == "POST"]
        assert impostor.requests == []  # refused before a byte of a request
    finally:
        await impostor.stop()

    # The peer port itself: no client certificate, no handshake; the phones' CA
    # and a server certificate of this fog do not make a client a member.
    ctx = client_context(fog_pki)
    with pytest.raises(aiohttp.ClientError):
        async with http.get(f"https://127.0.0.1:{a_port}/fog/state", ssl=ctx) as response:
            await response.read()
    ctx.load_cert_chain(str(fog_pki.paths.server_cert), str(fog_pki.paths.server_key))
    with pytest.raises(aiohttp.ClientError):
        async with http.get(f"https://127.0.0.1:{a_port}/fog/state", ssl=ctx) as response:
            await response.read()
    # On the phones' port the fog's state is no route, and its headers mean nothing.
    async with http.get(f"{a.url}/fog/state", ssl=client_context(fog_pki)) as response:
        assert response.status == 404
    async with http.post(
        f"{a.url}/v1/chat/completions",
        json={"model": SMALL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"X-Fognode-Hop": "b", "X-Fognode-Principal": '{"uid": "x", "kind": "api_key"}'},
        ssl=client_context(fog_pki),
    ) as response:
        assert response.status == 401


async def test_a_node_whose_upstream_is_down_hands_its_requests_to_a_member(
    make_node: NodeFactory, fog_pki: Pki, http: aiohttp.ClientSession
) -> None:
    a_port, b_port = free_port(), free_port()
    a = await make_node("a", models=(SMALL,), peers=[b_port], port=a_port)
    await make_node("b", models=(SMALL,), peers=[a_port], port=b_port)
    await members_of(a, 1)
    await a.standin.stop()  # a's Ollama is gone ...
    await a.server.app[UPSTREAM].refresh()  # ... and a's check says so
    status, headers, text = await chat(http, a, fog_pki, SMALL)
    assert status == 200 and text == DEFAULT_REPLY
    assert headers["X-Fognode-Upstream"] == "peer b.local"
