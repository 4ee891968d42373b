"""The gateway keeps serving when mDNS cannot work (the announcement is the
discovery part's; the rest of it is in tests/unit/test_discovery_parts.py)."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from tests.support.gateway import GatewayFactory
from tests.support.ollama_standin import OllamaStandIn


async def test_gateway_keeps_serving_when_mdns_cannot_work(
    standin: OllamaStandIn, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fognode.mdns")
    # Loopback bind: nothing worth announcing.
    quiet = await make_gateway(standin.url, mdns=True)
    # An address this machine does not have: zeroconf cannot open its sockets.
    broken = await make_gateway(standin.url, mdns=True, mdns_interfaces=["192.0.2.99"])
    assert "no network address to announce" in caplog.text
    assert "cannot announce the node" in caplog.text
    async with aiohttp.ClientSession() as http:
        for gateway in (quiet, broken):
            async with http.get(f"{gateway.url}/healthz") as resp:
                assert resp.status == 200
