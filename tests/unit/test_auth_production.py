"""Production-mode verification without Google.

Tokens are minted here as Firebase mints them (RS256, a kid, iss
https://securetoken.google.com/<project>, aud <project>, sub, auth_time,
iat, exp) with a locally generated key, and the key set is served on
127.0.0.1 the way Google serves its x509 certificate map. firebase-admin's
own verifier checks them, through the one seam fognode has: the key-set URL.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt
from google.auth import jwt as google_jwt

from fognode.auth.errors import AuthError
from fognode.auth.firebase import AuthConfigError, FirebaseVerifier
from tests.conftest import GatewayFactory
from tests.ollama_standin import OllamaStandIn

PROJECT = "fognode-prod-test"
ISSUER = f"https://securetoken.google.com/{PROJECT}"


@dataclass
class SigningKey:
    kid: str
    pem: bytes
    cert_pem: str

    @classmethod
    def make(cls, kid: str) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken test")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(kid, pem, cert.public_bytes(serialization.Encoding.PEM).decode())

    def mint(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": PROJECT,
            "sub": "user-123",
            "auth_time": now - 60,
            "iat": now - 60,
            "exp": now + 3540,
            "email": "user@example.com",
            "email_verified": True,
            "firebase": {"sign_in_provider": "password"},
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        signer = crypt.RSASigner.from_string(self.pem, key_id=self.kid)
        return google_jwt.encode(signer, claims).decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.make("key-1")


@pytest.fixture(scope="module")
def stranger_key() -> SigningKey:
    return SigningKey.make("key-unknown")


@pytest.fixture
async def key_set(signing_key: SigningKey) -> AsyncIterator[str]:
    """Google's x509 key map, served on loopback."""

    async def certs(request: web.Request) -> web.Response:
        return web.json_response(
            {signing_key.kid: signing_key.cert_pem},
            headers={"Cache-Control": "public, max-age=3600"},
        )

    app = web.Application()
    app.router.add_get("/robot/v1/metadata/x509/securetoken", certs)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/robot/v1/metadata/x509/securetoken"
    await runner.cleanup()


@pytest.fixture
async def verifier(key_set: str) -> AsyncIterator[FirebaseVerifier]:
    v = FirebaseVerifier(project_id=PROJECT, certs_url=key_set)
    yield v
    v.close()


async def verify(verifier: FirebaseVerifier, token: str) -> dict[str, Any]:
    # Off the loop, as the gateway runs it: the key set is served by this loop.
    return await asyncio.to_thread(verifier.verify, token)


async def test_good_token(verifier: FirebaseVerifier, signing_key: SigningKey) -> None:
    claims = await verify(verifier, signing_key.mint())
    assert claims["uid"] == "user-123"
    assert claims["email"] == "user@example.com"


def _tamper_payload(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(_unb64(payload))
    claims["sub"] = "someone-else"
    return ".".join([header, _b64(json.dumps(claims).encode()), signature])


def _tamper_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(_unb64(signature))
    raw[10] ^= 0xFF
    return ".".join([header, payload, _b64(bytes(raw))])


def _alg_none(token: str) -> str:
    _, payload, _ = token.split(".")
    return ".".join([_b64(b'{"alg":"none","typ":"JWT"}'), payload, ""])


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


def test_production_mode_refuses_the_emulator_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", "127.0.0.1:9099")
    with pytest.raises(AuthConfigError, match="unsigned tokens"):
        FirebaseVerifier(project_id=PROJECT)


def test_revocation_checks_need_a_service_account() -> None:
    with pytest.raises(AuthConfigError, match="service account"):
        FirebaseVerifier(project_id=PROJECT, check_revoked=True)
