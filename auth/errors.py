"""Why a caller was refused, in words a developer can act on.

401 means "who are you?" (no, bad, expired or revoked credential) and
carries ``WWW-Authenticate: Bearer error="invalid_token"`` (RFC 6750);
403 means "I know who you are, and no" (a policy rule failed). The reason
code goes into the OpenAI error body's ``code`` so clients can branch on it.
The token itself never appears in a message or a log line.
"""

from __future__ import annotations


class AuthError(Exception):
    status = 401

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    @property
    def www_authenticate(self) -> str:
        # Also for a missing token: clients of the reference node treat every
        # 401 alike, and one header form is simpler to match on.
        return f'Bearer realm="fognode", error="invalid_token", error_description="{self.reason}"'


class PolicyError(AuthError):
    status = 403

    @property
    def www_authenticate(self) -> str:
        return (
            f'Bearer realm="fognode", error="insufficient_scope", error_description="{self.reason}"'
        )


class VerifierUnavailable(Exception):
    """Google's public keys (or the user lookup) could not be fetched: a 503, not a 401."""
