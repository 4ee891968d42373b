"""Token checks firebase-admin leaves out, and token input that used to be a 500
(issue 11, defects 3 and 7, and the credential echoed in a 401).

Production tokens are minted with a local RS256 key as in
test_auth_production.py; emulator-mode tokens are unsigned, the way the
Firebase Auth Emulator issues them, and a real one comes from the emulator.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

import aiohttp
import pytest

from fognode.auth.errors import AuthError
from fognode.auth.firebase import CLOCK_SKEW_SECONDS, FirebaseVerifier, check_times
from fognode.gateway.node.server import RunningServer
from tests.conftest import GatewayFactory
from tests.firebase_emulator import PROJECT as EMULATOR_PROJECT
from tests.firebase_emulator import AuthEmulator
from tests.ollama_standin import OllamaStandIn
from tests.test_auth_production import (  # fixtures, by name
    PROJECT,
    SigningKey,
    key_set,
    signing_key,
    verifier,
)

__all__ = ["key_set", "signing_key", "verifier"]


async def verify(verifier: FirebaseVerifier, token: str) -> dict[str, Any]:
    return await asyncio.to_thread(verifier.verify, token)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], header: bytes = b'{"alg":"none","typ":"JWT"}') -> str:
    return f"{_b64(header)}.{_b64(json.dumps(claims).encode())}."


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


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"nbf": "later"}, "not_yet_valid"),
        ({"auth_time": "later"}, "not_yet_valid"),
        ({"auth_time": None}, "invalid_token"),
        ({"auth_time": "a string"}, "invalid_token"),
        ({"nbf": True}, "invalid_token"),
    ],
)
async def test_production_tokens_with_future_nbf_or_auth_time_are_refused(
    verifier: FirebaseVerifier, signing_key: SigningKey, claims: dict[str, Any], reason: str
) -> None:
    later = int(time.time()) + LATER
    token = signing_key.mint(**{k: later if v == "later" else v for k, v in claims.items()})
    with pytest.raises(AuthError) as caught:
        await verify(verifier, token)
    assert caught.value.reason == reason


async def test_production_time_claims_within_the_skew_are_accepted(
    verifier: FirebaseVerifier, signing_key: SigningKey
) -> None:
    """A node whose clock lags Google's a little still accepts fresh tokens."""
    soon = int(time.time()) + CLOCK_SKEW_SECONDS // 2
    claims = await verify(verifier, signing_key.mint(iat=soon, auth_time=soon, nbf=soon))
    assert claims["uid"] == "user-123"
    # ... but exp gets no allowance.
    with pytest.raises(AuthError) as caught:
        await verify(verifier, signing_key.mint(exp=int(time.time()) - 2))
    assert caught.value.reason == "expired_token"


def test_check_times_rules() -> None:
    now = 1_000_000.0
    base = {"iat": now, "auth_time": now, "exp": now + 60}
    check_times(base, now)
    check_times(dict(base, nbf=now + CLOCK_SKEW_SECONDS), now)
    for name in ("iat", "auth_time", "nbf"):
        with pytest.raises(AuthError, match=name):
            check_times(dict(base, **{name: now + CLOCK_SKEW_SECONDS + 1}), now)
    with pytest.raises(AuthError, match="expired"):
        check_times(dict(base, exp=now), now)


@pytest.fixture
async def emulator_node(
    standin: OllamaStandIn, make_gateway: GatewayFactory, emulator: AuthEmulator
) -> RunningServer:
    return await make_gateway(
        standin.url,
        auth="firebase",
        firebase_project_id=EMULATOR_PROJECT,
        firebase_auth_emulator_host=emulator.host,
    )


async def call(node: RunningServer, authorization: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{node.url}/v1/models", headers={"Authorization": authorization}) as resp,
    ):
        return resp.status, await resp.json()


async def test_emulator_tokens_with_future_nbf_or_auth_time_are_refused(
    emulator_node: RunningServer, emulator: AuthEmulator
) -> None:
    real = emulator.sign_up("times@example.com").id_token
    status, _ = await call(emulator_node, f"Bearer {real}")
    assert status == 200  # a real emulator token has every claim checked here
    later = int(time.time()) + LATER
    for claims, reason in (
        (emulator_claims(nbf=later), "not_yet_valid"),
        (emulator_claims(auth_time=later), "not_yet_valid"),
        (emulator_claims(auth_time=None), "invalid_token"),
    ):
        status, body = await call(emulator_node, f"Bearer {unsigned(claims)}")
        assert (status, body["error"]["code"]) == (401, reason), claims


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("where", ["header", "payload"])
async def test_deeply_nested_tokens_are_401_not_500(
    emulator_node: RunningServer,
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    key_set: str,
    where: str,
) -> None:
    production = await make_gateway(
        standin.url, auth="firebase", firebase_project_id=PROJECT, firebase_certs_url=key_set
    )
    deep = _b64(nested(5000))  # 13 KB of base64: under the header size limit
    ok_header = _b64(b'{"alg":"RS256","kid":"key-1","typ":"JWT"}')
    token = f"{deep}.e30.c2ln" if where == "header" else f"{ok_header}.{deep}.c2ln"
    for node in (emulator_node, production):
        status, body = await call(node, f"Bearer {token}")
        assert (status, body["error"]["code"]) == (401, "malformed_token")


async def test_an_unsupported_scheme_is_not_quoted_back(
    emulator_node: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-THISISTHESECRETVALUE"
    for authorization in (secret, f"Token {secret}", f"Basic {secret}"):
        status, body = await call(emulator_node, authorization)
        assert (status, body["error"]["code"]) == (401, "malformed_token")
        assert secret[:8] not in json.dumps(body)
    assert not any(secret[3:11] in r.getMessage() for r in caplog.records)
