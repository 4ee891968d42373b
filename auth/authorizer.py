"""Admit a request: read the credential, prove it, apply the policy.

Firebase verification is blocking work; it runs in a small dedicated thread
pool so it never stalls the event loop and never competes with other
offloaded work for the default executor. Results are cached per token until
the token expires, and concurrent requests with one token share a single
verification.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .api_keys import ApiKeyEntry, ApiKeys, looks_like_api_key
from .bearer import bearer_token
from .cache import VerifiedCache, token_key
from .errors import AuthError
from .firebase import FirebaseVerifier
from .policy import AccessPolicy
from .principal import ANONYMOUS, Access, Principal

log = logging.getLogger("fognode.auth")


class TokenAuthorizer:
    def __init__(
        self,
        *,
        verifier: FirebaseVerifier | None,
        api_keys: ApiKeys,
        policy: AccessPolicy,
        cache_size: int = 10_000,
        revocation_recheck_seconds: float = 300.0,
        threads: int = 4,
    ) -> None:
        self.verifier = verifier
        self.api_keys = api_keys
        self.policy = policy
        self.cache: VerifiedCache[Principal] = VerifiedCache(cache_size)
        self.revocation_recheck_seconds = revocation_recheck_seconds
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fognode-auth")

    @property
    def kinds(self) -> str:
        """The credentials this node accepts, as mDNS announces them."""
        accepted = [
            name for name, on in (("firebase", self.verifier), ("apikey", self.api_keys)) if on
        ]
        return "+".join(accepted) or "none"

    def use_keys(self, entries: Iterable[ApiKeyEntry]) -> None:
        """The key file changed: the new set replaces the old one in one step,
        so a request is checked against one of them, never a mix."""
        self.api_keys = ApiKeys(entries)

    def key_caller(self, name: str) -> Principal | None:
        entry = self.api_keys.named(name)
        return entry.principal() if entry is not None else None

    def key_standing(self, name: str) -> Principal | None:
        return self.api_keys.standing(name)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.verifier is not None:
            self.verifier.close()

    async def authorize(self, authorization: str | None, access: Access) -> Principal:
        principal = await self._authenticate(authorization)
        self.policy.check(principal, access)
        return principal

    async def _authenticate(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if looks_like_api_key(token):
            principal = self.api_keys.check(token)
            if principal is None:
                raise AuthError("invalid_api_key", "The API key is not known to this node.")
            return principal
        if self.verifier is None:
            raise AuthError(
                "invalid_token",
                "This node accepts API keys only (Firebase verification is not configured).",
            )
        return await self.cache.get_or_verify(token_key(token), lambda: self._verify(token))

    async def _verify(self, token: str) -> tuple[Principal, float]:
        assert self.verifier is not None
        loop = asyncio.get_running_loop()
        claims = await loop.run_in_executor(self._pool, self.verifier.verify, token)
        principal = self._principal(claims)
        until = float(claims.get("exp", 0))
        if self.verifier.check_revoked:
            # Revocation is only seen when the token is checked again.
            until = min(until, time.time() + self.revocation_recheck_seconds)
        return principal, until

    def _principal(self, claims: dict[str, Any]) -> Principal:
        email = claims.get("email")
        return Principal(
            uid=str(claims["uid"]),
            kind="firebase",
            claims=claims,
            is_admin=self.policy.is_admin(claims),
            email=email if isinstance(email, str) else None,
        )


class NoAuth:
    """`auth = none`: everyone is admitted as an administrator. Development only."""

    kinds = "none"

    async def authorize(self, authorization: str | None, access: Access) -> Principal:
        return ANONYMOUS

    def use_keys(self, entries: Iterable[ApiKeyEntry]) -> None:
        return None  # nothing is checked

    def key_caller(self, name: str) -> Principal | None:
        return None

    def key_standing(self, name: str) -> Principal | None:
        return None

    def close(self) -> None:
        return None
