"""Which upstream serves, decided at start, on the gateway in the test's process:
as configured, else Ollama if it answers at the default address (a stand-in).

"Ollama's default address" is pointed at a stand-in or at a free loopback
port, so the tests never depend on what runs at 127.0.0.1:11434 here. The
embedded model's cases start real llama.cpp children:
tests/system/test_upstream_choice.py.
"""

from __future__ import annotations

import aiohttp
import pytest

from fognode.gateway.config.sections import upstreams as settings_module
from fognode.gateway.node.server import RunningServer, start_server
from fognode.gateway.upstreams.pool import UPSTREAM
from tests.support.gateway import GatewayFactory, fresh_settings
from tests.support.helpers import free_port
from tests.support.ollama_standin import OllamaStandIn


async def test_a_configured_upstream_is_used_as_given_even_when_it_is_down(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    gateway = await make_gateway(down)
    pool = gateway.app[UPSTREAM]
    assert pool.kind == "ollama" and pool.base == down
    assert all(m.local is None for m in pool.members)
    async with http.get(f"{gateway.url}/readyz") as resp:
        body = await resp.json()
    assert resp.status == 503 and body["status"] == "unavailable"
    # Said at start, in the log and here: a named upstream turns the embedded
    # model off, and this one does not answer (the README once named one).
    choice = body["upstream_choice"]
    assert choice.startswith(f"Ollama at {down}, as configured, which does not answer now")
    assert "turns the embedded model off" in choice


async def test_ollama_at_the_default_address_is_used_when_it_answers(
    standin: OllamaStandIn,
    unconfigured: list[RunningServer],
    monkeypatch: pytest.MonkeyPatch,
    http: aiohttp.ClientSession,
) -> None:
    monkeypatch.setattr(settings_module, "DEFAULT_UPSTREAM_URL", standin.url)
    gateway = await start_server(fresh_settings())
    unconfigured.append(gateway)
    async with http.get(f"{gateway.url}/readyz") as resp:
        body = await resp.json()
    assert resp.status == 200 and body["upstream_kind"] == "ollama"
    assert body["upstream_choice"] == f"Ollama answers at {standin.url}: forwarding to it"
    assert "embedded" not in body
