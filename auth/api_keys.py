"""Static API keys for scripts and home-lab tools that have no Firebase account.

Keys are random (``fnk_`` + 32 bytes, base64url), so SHA-256 is the right
hash: nothing to brute-force, nothing slow on the event loop (a per-request
bcrypt is what stalls some peers). Only the hashes are configured; every
configured hash is compared, in constant time, on every check.

Configured entries are ``name:role:sha256hex`` with role ``user`` or
``admin``; ``fognode apikey create`` prints a new key and its entry.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from .principal import Principal

PREFIX = "fnk_"


@dataclass(frozen=True)
class ApiKeyEntry:
    name: str
    admin: bool
    digest: bytes

    @classmethod
    def parse(cls, line: str) -> ApiKeyEntry:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[1] not in ("user", "admin"):
            # Only the name is shown: the line may be a key pasted in by mistake.
            shown = repr(parts[0]) if len(parts) > 1 and PREFIX not in parts[0] else "an entry"
            raise ValueError(f"API key entry {shown} is not 'name:user|admin:sha256hex'")
        name, role, hexdigest = parts
        try:
            digest = bytes.fromhex(hexdigest)
        except ValueError:
            raise ValueError(f"API key entry for {name!r} has a hash that is not hex") from None
        if len(digest) != 32:
            raise ValueError(f"API key entry for {name!r} needs a SHA-256 hash (64 hex digits)")
        return cls(name, role == "admin", digest)


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def entry_for(key: str, name: str, *, admin: bool) -> str:
    return f"{name}:{'admin' if admin else 'user'}:{hashlib.sha256(key.encode()).hexdigest()}"


def looks_like_api_key(token: str) -> bool:
    return token.startswith(PREFIX)


class ApiKeys:
    """One set of keys, never changed: a reload makes a new set and the
    authorizer swaps it in whole (TokenAuthorizer.use_keys)."""

    def __init__(self, entries: Iterable[ApiKeyEntry]) -> None:
        self.entries = tuple(entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def check(self, key: str) -> Principal | None:
        digest = hashlib.sha256(key.encode()).digest()
        found: ApiKeyEntry | None = None
        for entry in self.entries:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        if found is None:
            return None
        return Principal(uid=f"apikey:{found.name}", kind="api_key", is_admin=found.admin)
