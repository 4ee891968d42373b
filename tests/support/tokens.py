"""Firebase ID tokens as Google mints them, without Google.

Tokens are minted here as Firebase mints them (RS256, a kid, iss
https://securetoken.google.com/<project>, aud <project>, sub, auth_time,
iat, exp) with a locally generated key, and the key set is served on
127.0.0.1 the way Google serves its x509 certificate map. firebase-admin's
own verifier checks them, through the one seam fognode has: the key-set URL.
Used by the auth tests of every level and by bench/auth.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt
from google.auth import jwt as google_jwt

from fognode.auth.firebase import FirebaseVerifier

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


def b64url(data: bytes) -> str:
    """base64url without padding, as JWTs are written."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
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
