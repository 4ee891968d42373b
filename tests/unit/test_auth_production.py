"""Production-mode verification without Google.

Tokens are minted as Firebase mints them with a locally generated key, and
the key set is served on 127.0.0.1 the way Google serves its x509
certificate map (tests/support/tokens.py). firebase-admin's own verifier
checks them, through the one seam fognode has: the key-set URL.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from fognode.auth.errors import AuthError
from fognode.auth.firebase import AuthConfigError, FirebaseVerifier
from tests.support.tokens import PROJECT, SigningKey, b64url, unb64url


async def verify(verifier: FirebaseVerifier, token: str) -> dict[str, Any]:
    # Off the loop, as the gateway runs it: the key set is served by this loop.
    return await asyncio.to_thread(verifier.verify, token)


async def test_good_token(verifier: FirebaseVerifier, signing_key: SigningKey) -> None:
    claims = await verify(verifier, signing_key.mint())
    assert claims["uid"] == "user-123"
    assert claims["email"] == "user@example.com"


def _tamper_payload(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(unb64url(payload))
    claims["sub"] = "someone-else"
    return ".".join([header, b64url(json.dumps(claims).encode()), signature])


def _tamper_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(unb64url(signature))
    raw[10] ^= 0xFF
    return ".".join([header, payload, b64url(bytes(raw))])


def _alg_none(token: str) -> str:
    _, payload, _ = token.split(".")
    return ".".join([b64url(b'{"alg":"none","typ":"JWT"}'), payload, ""])


BAD_TOKENS = {
    "expired": (
        lambda k, s: k.mint(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
        "expired_token",
    ),
    "not yet valid": (
        lambda k, s: k.mint(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200),
        "not_yet_valid",
    ),
    "wrong aud": (lambda k, s: k.mint(aud="another-project"), "wrong_audience"),
    "wrong iss": (
        lambda k, s: k.mint(iss="https://securetoken.google.com/another-project"),
        "wrong_issuer",
    ),
    "unknown kid": (lambda k, s: s.mint(), "unknown_key"),
    "tampered payload": (lambda k, s: _tamper_payload(k.mint()), "invalid_signature"),
    "tampered signature": (lambda k, s: _tamper_signature(k.mint()), "invalid_signature"),
    "alg none": (lambda k, s: _alg_none(k.mint()), "unsupported_algorithm"),
    "empty sub": (lambda k, s: k.mint(sub=""), "invalid_subject"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_are_refused_with_the_reason(
    verifier: FirebaseVerifier, signing_key: SigningKey, stranger_key: SigningKey, case: str
) -> None:
    make, reason = BAD_TOKENS[case]
    token = make(signing_key, stranger_key)
    with pytest.raises(AuthError) as caught:
        await verify(verifier, token)
    assert caught.value.reason == reason
    assert token not in caught.value.message


def test_production_mode_refuses_the_emulator_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9099")
    with pytest.raises(AuthConfigError, match="unsigned tokens"):
        FirebaseVerifier(project_id=PROJECT)


def test_revocation_checks_need_a_service_account() -> None:
    with pytest.raises(AuthConfigError, match="service account"):
        FirebaseVerifier(project_id=PROJECT, check_revoked=True)
