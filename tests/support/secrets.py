"""Recognisable secrets to drive through the places credentials travel, and
the search for any 8-character fragment of one in a log or an answer."""

from __future__ import annotations

import json
import secrets

from fognode.auth.api_keys import new_key
from tests.support.tokens import b64url

ADMIN_KEY = new_key()  # valid: the paths that succeed are driven too


OPAQUE = "opq" + secrets.token_hex(20)  # matches no credential pattern


UPSTREAM_KEY = "ups" + secrets.token_hex(20)


FORGED_JWT = ".".join(
    [
        b64url(json.dumps({"alg": "RS256", "kid": secrets.token_hex(8)}).encode()),
        b64url(json.dumps({"sub": secrets.token_hex(12), "aud": "x"}).encode()),
        b64url(secrets.token_bytes(64)),
    ]
)


SECRETS = {"admin key": ADMIN_KEY, "opaque": OPAQUE, "jwt": FORGED_JWT, "upstream": UPSTREAM_KEY}


def fragments(secret: str) -> set[str]:
    return {secret[i : i + 8] for i in range(len(secret) - 7)}


def leaks(text: str) -> list[str]:
    return [
        f"{name}: {fragment!r}"
        for name, secret in SECRETS.items()
        for fragment in sorted(fragments(secret))
        if fragment in text
    ]
