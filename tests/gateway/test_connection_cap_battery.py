"""A client over its per-address connection cap is told to retry, not reset.

A phone app or a script that opens many streams at once from one address
(the issue's battery: 200 concurrent streams) used to see connection errors
for the connections over the cap: refused ones were closed (TLS) or answered
before their request and closed under it (plain HTTP), and silent ones were
reset to make room. Each now gets an HTTP 503 with Retry-After while the
node has room for it (gateway/transport/connections.py).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import GatewayFactory
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import make_pki
from tests.support.tls import HOST, ConnectByIp

CAP = 8
STREAMS = 200


class _ManyByIp(ConnectByIp):
    """The app's way of connecting (tests/test_tls.py), with room for every stream at once."""

    def __init__(self, ip: str, verify: ssl.SSLContext, limits: httpx.Limits) -> None:
        httpx.AsyncHTTPTransport.__init__(self, verify=verify, limits=limits)
        self.ip = ip


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_200_streams_from_one_address_get_answers_not_connection_errors(
    standin: OllamaStandIn, make_gateway: GatewayFactory, tmp_path: Path, tls: bool
) -> None:
    standin.gate = asyncio.Queue()  # the admitted streams wait until released
    options: dict[str, object] = {"max_connections_per_client": CAP}
    if tls:
        pki = make_pki(tmp_path / "certs")
        options |= {"tls": True, "certs_dir": pki.paths.directory}
    gateway = await make_gateway(standin.url, **options)
    limits = httpx.Limits(max_connections=STREAMS, max_keepalive_connections=0)
    if tls:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        client = httpx.AsyncClient(transport=_ManyByIp("127.0.0.1", ctx, limits), timeout=60)
        base = f"https://{HOST}:{gateway.port}"
    else:
        client = httpx.AsyncClient(limits=limits, timeout=60)
        base = gateway.url
    body = {
        "model": "llama3.2:1b",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    outcomes: Counter[str] = Counter()

    async def one() -> None:
        try:
            async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
                raw = await resp.aread()
        except httpx.TransportError as exc:
            outcomes[f"connection error: {type(exc).__name__}"] += 1
            return
        if resp.status_code == 503:
            assert resp.headers["Retry-After"] == "1"
            assert json.loads(raw)["error"]["code"] == "too_many_connections"
        outcomes[str(resp.status_code)] += 1

    async with client:
        tasks = [asyncio.create_task(one()) for _ in range(STREAMS)]
        while sum(outcomes.values()) < STREAMS - CAP:  # the refused answer at once
            await asyncio.sleep(0.05)
            if all(t.done() for t in tasks):
                break
        for _ in range(100 * CAP):
            standin.gate.put_nowait(None)
        await asyncio.gather(*tasks)
    print(f"\n{'TLS' if tls else 'plain'}: {dict(outcomes)}")
    assert not [k for k in outcomes if k.startswith("connection error")], outcomes
    assert outcomes["200"] >= 1 and outcomes["200"] + outcomes["503"] == STREAMS
