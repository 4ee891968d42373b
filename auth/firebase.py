"""Firebase ID token verification with firebase-admin.

firebase-admin is synchronous (signature checks, key downloads, and with
revocation checks a call to the Identity Toolkit API), so ``verify`` is a
blocking call that the authorizer runs in a thread pool.

The public-key URL is a parameter: by default Google's, and in tests a key
set served on 127.0.0.1 so production-mode verification can be exercised
with locally minted RS256 tokens. That is the only seam; the checks
themselves (kid, alg, aud, iss, sub, signature, iat, exp) are firebase-admin's
own ``_JWTVerifier``, the same object ``auth.verify_id_token`` uses.

firebase-admin checks only ``iat`` and ``exp``; Firebase's documented checks
also want ``auth_time`` in the past, and a JWT's ``nbf`` means what it says.
fognode checks all the time claims itself, in both modes, with one small
allowance (:data:`CLOCK_SKEW_SECONDS`) for a node clock that lags Google's
on the claims that say "not before" (iat, nbf, auth_time), and none on exp.

The token's JSON is parsed by firebase-admin (and google-auth) with the
standard library, which recurses once per nesting level: the header and
payload are checked against a depth bound first (safejson), so a token
nested a few thousand levels deep is a 401, not a RecursionError.

Emulator mode is firebase-admin's: it is switched on by the process-wide
FIREBASE_AUTH_EMULATOR_HOST variable and then skips signature *and expiry*
checks. fognode therefore (a) refuses production mode while that variable
is set, since firebase-admin would silently accept unsigned tokens, and
(b) checks iat/exp itself in emulator mode.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import time
from pathlib import Path
from typing import Any

import firebase_admin
from firebase_admin import _token_gen as firebase_tokens
from firebase_admin import auth, credentials
from google.auth import credentials as google_credentials

from .. import safejson
from .errors import AuthError, VerifierUnavailable

EMULATOR_ENV = "FIREBASE_AUTH_EMULATOR_HOST"
GOOGLE_CERTS_URL: str = firebase_tokens.ID_TOKEN_CERT_URI
ISSUER_PREFIX: str = firebase_tokens.ID_TOKEN_ISSUER_PREFIX
_app_numbers = itertools.count(1)
# How far in the future iat, nbf and auth_time may lie (the node's clock may lag).
CLOCK_SKEW_SECONDS = 60
# A Firebase ID token's claims nest 4 levels; custom claims add a few.
JOSE_MAX_DEPTH = 32


class _NoCredentials(credentials.Base):  # type: ignore[misc]
    """A credential for a firebase-admin app that only verifies tokens."""

    def get_credential(self) -> google_credentials.Credentials:
        return google_credentials.AnonymousCredentials()  # type: ignore[no-untyped-call]


class AuthConfigError(Exception):
    """fognode cannot verify tokens with this configuration; refuse to start."""


def _segment(token: str, index: int) -> bytes:
    segment = token.split(".")[index] if token.count(".") >= index else ""
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, parsed without trusting it; the payload's nesting is
    checked too, before firebase-admin parses it with the standard library."""
    try:
        header = safejson.loads(_segment(token, 0), JOSE_MAX_DEPTH)
        safejson.check_depth(_segment(token, 1), JOSE_MAX_DEPTH)
    except safejson.JsonTooDeep:
        raise AuthError(
            "malformed_token", "The bearer token's JSON nests deeper than any real token."
        ) from None
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise AuthError(
            "malformed_token", "The bearer token is not a JWT (a Firebase ID token)."
        ) from None
    if not isinstance(header, dict):
        raise AuthError("malformed_token", "The bearer token's header is not a JSON object.")
    return header


def _classify(exc: Exception) -> AuthError:
    """Turn firebase-admin's and google-auth's messages into stable reason codes."""
    text = str(exc)
    if isinstance(exc, auth.ExpiredIdTokenError) or "Token expired" in text:
        return AuthError("expired_token", "The Firebase ID token has expired; fetch a new one.")
    rules = (
        ('"aud"', "wrong_audience", "The token was issued for another Firebase project."),
        ("wrong audience", "wrong_audience", "The token was issued for another Firebase project."),
        ('"iss"', "wrong_issuer", "The token's issuer is not this Firebase project."),
        ("too early", "not_yet_valid", "The token is not valid yet (check the clocks)."),
        ("signature", "invalid_signature", "The token's signature does not verify."),
        ("key id", "unknown_key", "The token was signed with a key Google does not publish."),
        ('"kid"', "malformed_token", "The token has no key id (kid)."),
        ("algorithm", "unsupported_algorithm", "The token is not signed with RS256."),
        ('"sub"', "invalid_subject", "The token has no valid subject (user id)."),
        ("custom token", "wrong_token_type", "A custom token is not an ID token: sign in first."),
    )
    for needle, reason, message in rules:
        if needle in text:
            return AuthError(reason, message)
    return AuthError("invalid_token", "The bearer token is not a valid Firebase ID token.")


def _time_claim(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise AuthError("invalid_token", f"The token's {name} claim is missing or not a time.")
    return float(value)


def check_times(claims: dict[str, Any], now: float | None = None) -> None:
    """exp in the future; iat, auth_time and nbf (if present) not in the future.

    firebase-admin checks iat and exp only, and in emulator mode neither.
    """
    now = time.time() if now is None else now
    exp = _time_claim(claims, "exp", required=True)
    assert exp is not None
    if exp <= now:
        raise AuthError("expired_token", "The Firebase ID token has expired; fetch a new one.")
    for name in ("iat", "auth_time", "nbf"):
        value = _time_claim(claims, name, required=name != "nbf")
        if value is not None and value > now + CLOCK_SKEW_SECONDS:
            raise AuthError(
                "not_yet_valid",
                f"The token is not valid yet: its {name} lies in the future (check the clocks).",
            )


class FirebaseVerifier:
    """Verifies Firebase ID tokens; every method here blocks."""

    def __init__(
        self,
        *,
        project_id: str,
        credentials_file: Path | None = None,
        emulator_host: str | None = None,
        certs_url: str = GOOGLE_CERTS_URL,
        check_revoked: bool = False,
        http_timeout: float = 10.0,
    ) -> None:
        if not project_id:
            raise AuthConfigError(
                "Firebase project id is not set: FOGNODE_FIREBASE_PROJECT_ID (or a service "
                "account file, whose project_id is used)."
            )
        self.project_id = project_id
        self.emulated = bool(emulator_host)
        self.check_revoked = check_revoked
        self._previous_emulator_env: str | None = None
        if emulator_host:
            # firebase-admin only knows this process-wide switch; close() restores it.
            self._previous_emulator_env = os.environ.get(EMULATOR_ENV, "")
            os.environ[EMULATOR_ENV] = emulator_host
        elif os.environ.get(EMULATOR_ENV):
            raise AuthConfigError(
                f"{EMULATOR_ENV} is set in the environment, which makes firebase-admin accept "
                "unsigned tokens. Unset it for production, or configure emulator mode "
                "(FOGNODE_FIREBASE_AUTH_EMULATOR_HOST)."
            )
        # Without a service account, no credentials at all: checking a token's
        # signature needs only Google's public keys, and letting firebase-admin
        # look for application default credentials would have google-auth probe
        # the cloud metadata server (169.254.169.254), which a fog node on a LAN
        # never needs.
        credential: credentials.Base = _NoCredentials()
        if credentials_file is not None:
            try:
                credential = credentials.Certificate(str(credentials_file))
            except (OSError, ValueError) as exc:
                raise AuthConfigError(
                    f"cannot use the Firebase service account file {credentials_file}: {exc}"
                ) from None
        elif check_revoked and not emulator_host:
            raise AuthConfigError(
                "revocation checks look users up with the Admin API and need a service "
                "account: set FOGNODE_FIREBASE_CREDENTIALS_FILE."
            )
        self.app = firebase_admin.initialize_app(
            credential,
            options={"projectId": project_id, "httpTimeout": http_timeout},
            name=f"fognode-{next(_app_numbers)}",
        )
        self._jwt = firebase_tokens._JWTVerifier(
            project_id=project_id,
            short_name="ID token",
            operation="verify_id_token()",
            doc_url="https://firebase.google.com/docs/auth/admin/verify-id-tokens",
            cert_url=certs_url,
            issuer=ISSUER_PREFIX,
            invalid_token_error=auth.InvalidIdTokenError,
            expired_token_error=auth.ExpiredIdTokenError,
        )
        # Caches the public keys for as long as Google's Cache-Control allows.
        self._request = firebase_tokens.CertificateFetchRequest(http_timeout)

    def close(self) -> None:
        firebase_admin.delete_app(self.app)
        if self._previous_emulator_env is not None:
            if self._previous_emulator_env:
                os.environ[EMULATOR_ENV] = self._previous_emulator_env
            else:
                os.environ.pop(EMULATOR_ENV, None)

    def verify(self, token: str) -> dict[str, Any]:
        """Return the token's claims, or raise AuthError (401) / VerifierUnavailable."""
        header = unverified_header(token)
        if not self.emulated and str(header.get("alg", "")).lower() == "none":
            raise AuthError(
                "unsupported_algorithm",
                "Unsigned tokens (alg 'none') are only accepted from the Auth Emulator.",
            )
        try:
            # The skew here loosens iat and exp alike; _check_times then
            # holds exp to the second.
            claims: dict[str, Any] = self._jwt.verify(
                token, self._request, clock_skew_seconds=CLOCK_SKEW_SECONDS
            )
        except auth.CertificateFetchError as exc:
            raise VerifierUnavailable(
                f"cannot fetch the public keys that sign Firebase tokens: {exc}"
            ) from None
        except (auth.InvalidIdTokenError, ValueError) as exc:
            raise _classify(exc) from None
        check_times(claims)
        if self.check_revoked:
            self._check_not_revoked(claims)
        return claims

    def _check_not_revoked(self, claims: dict[str, Any]) -> None:
        try:
            user = auth.get_user(claims["uid"], app=self.app)
        except auth.UserNotFoundError:
            raise AuthError("user_not_found", "The token's user no longer exists.") from None
        except firebase_admin.exceptions.FirebaseError as exc:
            raise VerifierUnavailable(f"cannot check the token for revocation: {exc}") from None
        if user.disabled:
            raise AuthError("user_disabled", "The token's user account is disabled.")
        valid_after_ms = user.tokens_valid_after_timestamp or 0
        if claims.get("iat", 0) * 1000 < valid_after_ms:
            raise AuthError("revoked_token", "The token has been revoked; sign in again.")
