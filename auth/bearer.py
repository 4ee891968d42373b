"""Read the bearer credential from the Authorization header."""

from __future__ import annotations

import re

from .errors import AuthError

# Visible ASCII only (RFC 6750 b64token is stricter still); checked in C by
# the regex engine, since this runs on every request.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")

# Firebase ID tokens are ~1 KB, growing with custom claims; 16 KB is far above
# any real token and keeps a hostile header from reaching the verifier.
MAX_TOKEN_LENGTH = 16 * 1024


def bearer_token(header: str | None) -> str:
    if header is None or not header.strip():
        raise AuthError(
            "missing_token",
            "Missing credentials: send 'Authorization: Bearer <Firebase ID token or API key>'.",
        )
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        # Not quoted back: with no space, the "scheme" is the credential itself.
        raise AuthError(
            "malformed_token",
            "Unsupported authorization scheme: use 'Authorization: Bearer <token>'.",
        )
    token = value.strip()
    if not token:
        raise AuthError("malformed_token", "The Authorization header has 'Bearer' but no token.")
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthError("malformed_token", "The bearer token is too long to be a valid token.")
    if not _TOKEN_CHARS.fullmatch(token):
        raise AuthError(
            "malformed_token", "The bearer token contains characters tokens never have."
        )
    return token
