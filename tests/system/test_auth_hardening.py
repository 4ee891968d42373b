"""Emulator-mode token input that used to be a 500 (issue 11, defects 3 and 7,
and the credential echoed in a 401), through the gateway against the real
Firebase Auth Emulator.

Emulator-mode tokens are unsigned, the way the emulator issues them, and a
real one comes from the emulator; production tokens are minted with a local
RS256 key (tests/support/tokens.py).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import aiohttp
import pytest

from fognode.gateway.node.server import RunningServer
from tests.support.firebase_emulator import PROJECT as EMULATOR_PROJECT
from tests.support.firebase_emulator import AuthEmulator
from tests.support.gateway import GatewayFactory
from tests.support.ollama_standin import OllamaStandIn
from tests.support.tokens import PROJECT, b64url


def unsigned(claims: dict[str, Any], header: bytes = b'{"alg":"none","typ":"JWT"}') -> str:
    return f"{b64url(header)}.{b64url(json.dumps(claims).encode())}."


def emulator_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": f"https://securetoken.google.com/{EMULATOR_PROJECT}",
        "aud": EMULATOR_PROJECT,
        "sub": "u1",
        "auth_time": now - 10,
        "iat": now - 10,
        "exp": now + 3600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


LATER = 3600  # well beyond the clock skew allowance


async def call(node: RunningServer, authorization: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{node.url}/v1/models", headers={"Authorization": authorization}) as resp,
    ):
        return resp.status, await resp.json()


async def test_emulator_tokens_with_future_nbf_or_auth_time_are_refused(
    emulator_gateway: RunningServer, emulator: AuthEmulator
) -> None:
    real = emulator.sign_up("times@example.com").id_token
    status, _ = await call(emulator_gateway, f"Bearer {real}")
    assert status == 200  # a real emulator token has every claim checked here
    later = int(time.time()) + LATER
    for claims, reason in (
        (emulator_claims(nbf=later), "not_yet_valid"),
        (emulator_claims(auth_time=later), "not_yet_valid"),
        (emulator_claims(auth_time=None), "invalid_token"),
    ):
        status, body = await call(emulator_gateway, f"Bearer {unsigned(claims)}")
        assert (status, body["error"]["code"]) == (401, reason), claims


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("where", ["header", "payload"])
async def test_deeply_nested_tokens_are_401_not_500(
    emulator_gateway: RunningServer,
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    key_set: str,
    where: str,
) -> None:
    production = await make_gateway(
        standin.url, auth="firebase", firebase_project_id=PROJECT, firebase_certs_url=key_set
    )
    deep = b64url(nested(5000))  # 13 KB of base64: under the header size limit
    ok_header = b64url(b'{"alg":"RS256","kid":"key-1","typ":"JWT"}')
    token = f"{deep}.e30.c2ln" if where == "header" else f"{ok_header}.{deep}.c2ln"
    for node in (emulator_gateway, production):
        status, body = await call(node, f"Bearer {token}")
        assert (status, body["error"]["code"]) == (401, "malformed_token")


async def test_an_unsupported_scheme_is_not_quoted_back(
    emulator_gateway: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-THISISTHESECRETVALUE"
    for authorization in (secret, f"Token {secret}", f"Basic {secret}"):
        status, body = await call(emulator_gateway, authorization)
        assert (status, body["error"]["code"]) == (401, "malformed_token")
        assert secret[:8] not in json.dumps(body)
    assert not any(secret[3:11] in r.getMessage() for r in caplog.records)
