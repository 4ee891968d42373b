"""Build the auth step from the settings, and refuse unsafe combinations.

Lives in gateway/ because it is wiring: it reads the settings and decides
which auth/ parts to assemble. auth/ itself knows nothing of settings.
"""

from __future__ import annotations

import json
import logging

from ..auth.api_keys import ApiKeys
from ..auth.authorizer import NoAuth, TokenAuthorizer
from ..auth.firebase import FirebaseVerifier
from ..auth.key_file import read_entries
from ..auth.policy import AccessPolicy
from .config.network import is_loopback
from .config.settings import Settings
from .pipeline.access import Authorizer

log = logging.getLogger("fognode.auth")


class UnsafeConfiguration(Exception):
    """A combination of settings fognode refuses to start with."""


def project_id(settings: Settings) -> str | None:
    """The Firebase project whose tokens are accepted: configured, or the one of
    the service account file (read here, not by the settings)."""
    if settings.firebase_project_id or settings.firebase_credentials_file is None:
        return settings.firebase_project_id
    try:
        value = json.loads(settings.firebase_credentials_file.read_text(encoding="utf-8")).get(
            "project_id"
        )
    except (OSError, ValueError, AttributeError):
        return None  # reported when the verifier loads the file
    return value if isinstance(value, str) else None


def build_authorizer(settings: Settings) -> Authorizer:
    if settings.auth == "none":
        if not is_loopback(settings.host) and not settings.allow_no_auth_on_lan:
            raise UnsafeConfiguration(
                f"auth=none on {settings.host} would let anyone on the network use this node. "
                "Bind to 127.0.0.1, turn auth on, or set FOGNODE_ALLOW_NO_AUTH_ON_LAN=true."
            )
        log.warning(
            "AUTHENTICATION IS OFF (auth=none): every request is admitted, model management "
            "included. For local development only."
        )
        return NoAuth()

    try:
        entries = read_entries(settings.api_keys, settings.api_keys_file)
    except (OSError, ValueError) as exc:
        raise UnsafeConfiguration(f"cannot load the API keys: {exc}") from None
    verifier = None
    project = project_id(settings)
    if project or settings.firebase_auth_emulator_host or not entries:
        if settings.firebase_auth_emulator_host:
            if settings.tls and not settings.allow_emulator_with_tls:
                raise UnsafeConfiguration(
                    "the Firebase Auth Emulator issues unsigned tokens anyone can forge; it is "
                    "refused on a TLS node. Use --no-tls for development, or set "
                    "FOGNODE_ALLOW_EMULATOR_WITH_TLS=true if you really mean it."
                )
            log.warning(
                "FIREBASE AUTH EMULATOR MODE (%s): tokens are NOT signature-checked. "
                "Development only.",
                settings.firebase_auth_emulator_host,
            )
        verifier = FirebaseVerifier(
            project_id=project or "",
            credentials_file=settings.firebase_credentials_file,
            emulator_host=settings.firebase_auth_emulator_host,
            certs_url=settings.firebase_certs_url,
            check_revoked=settings.check_revoked,
        )
    policy = AccessPolicy.build(
        required_claims=settings.required_claims,
        allowed_uids=settings.allowed_uids,
        allowed_email_domains=settings.allowed_email_domains,
        require_email_verified=settings.require_email_verified,
        admin_claim=settings.admin_claim,
    )
    log.info(
        "auth: %s%s; %d API key(s)",
        "Firebase project " + (project or "?") if verifier else "API keys only",
        " (revocation checked)" if settings.check_revoked else "",
        len(entries),
    )
    return TokenAuthorizer(
        verifier=verifier,
        api_keys=ApiKeys(entries),
        policy=policy,
        cache_size=settings.token_cache_size,
        revocation_recheck_seconds=settings.revocation_recheck_seconds,
        threads=settings.auth_threads,
    )
