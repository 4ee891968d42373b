"""Production-mode verification through the gateway, without Google.

Tokens are minted with a local key and the key set is served on 127.0.0.1
(tests/support/tokens.py); the gateway runs in the test's process in front
of the Ollama stand-in.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.support.gateway import GatewayFactory
from tests.support.ollama_standin import OllamaStandIn
from tests.support.tokens import PROJECT, SigningKey


async def test_through_the_gateway_off_the_event_loop(
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    key_set: str,
    signing_key: SigningKey,
    stranger_key: SigningKey,
) -> None:
    """The key set is served by the same event loop as the gateway: had the
    gateway verified on the loop, its synchronous key fetch would deadlock."""
    gateway = await make_gateway(
        standin.url, auth="firebase", firebase_project_id=PROJECT, firebase_certs_url=key_set
    )
    body = {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        for token, status, code in (
            (signing_key.mint(), 200, None),
            (stranger_key.mint(), 401, "unknown_key"),
            (
                signing_key.mint(exp=int(time.time()) - 10, iat=int(time.time()) - 100),
                401,
                "expired_token",
            ),
        ):
            async with (
                asyncio.timeout(30),
                http.post(
                    f"{gateway.url}/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp,
            ):
                assert resp.status == status
                if code:
                    assert (await resp.json())["error"]["code"] == code
                    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_unreachable_key_set_is_503_not_401(
    standin: OllamaStandIn, make_gateway: GatewayFactory, signing_key: SigningKey
) -> None:
    gateway = await make_gateway(
        standin.url,
        auth="firebase",
        firebase_project_id=PROJECT,
        firebase_certs_url="http://127.0.0.1:9/nothing",
    )
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {signing_key.mint()}"}
        ) as resp,
    ):
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "auth_unavailable"
        assert resp.headers["Retry-After"]
