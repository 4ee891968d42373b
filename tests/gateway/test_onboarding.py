"""The onboarding page's port is behind the API's connection guard, on the
gateway in the test's process."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from tests.support.gateway import GatewayFactory
from tests.support.helpers import free_port, wait_until
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import Pki


async def test_the_page_port_is_behind_the_api_connection_guard(
    standin: OllamaStandIn, make_gateway: GatewayFactory, clinic_pki: Pki
) -> None:
    port = free_port()
    node = await make_gateway(
        standin.url,
        tls=True,
        certs_dir=clinic_pki.paths.directory,
        onboarding=True,
        onboarding_port=port,
        client_first_byte_timeout=0.5,
    )
    guard = node.runner.guard
    assert guard is not None and node.onboarding is not None
    assert node.onboarding.url == f"http://127.0.0.1:{port}"

    # A silent connection to the page's port is counted and reaped like one to the API's.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await wait_until(lambda: len(guard) == 1, "the guard counts the connection")
    assert await reader.read() == b""  # closed by the node
    writer.close()
    await wait_until(lambda: len(guard) == 0, "the guard lets it go")
    assert guard.reaped_total == 1

    # One that speaks gets the page, and the status page links to it.
    async with aiohttp.ClientSession() as http:
        async with http.get(node.onboarding.url + "/") as resp:
            assert resp.status == 200 and resp.headers["Server"] == "fognode"
        live = f"https://127.0.0.1:{node.port}/status/live"
        context = ssl.create_default_context(cafile=str(clinic_pki.ca))
        async with http.get(live, ssl=context, headers={"Authorization": "Bearer -"}) as resp:
            assert resp.status == 200
            assert node.onboarding.url in await resp.text()
