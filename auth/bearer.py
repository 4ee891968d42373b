"""Read the bearer credential from the Authorization header."""

from __future__ import annotations

from .errors import AuthError

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
        raise AuthError(
            "malformed_token",
            f"Unsupported authorization scheme '{scheme[:20]}': use 'Bearer <token>'.",
        )
    token = value.strip()
    if not token:
        raise AuthError("malformed_token", "The Authorization header has 'Bearer' but no token.")
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthError("malformed_token", "The bearer token is too long to be a valid token.")
    if any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise AuthError(
            "malformed_token", "The bearer token contains characters tokens never have."
        )
    return token
