"""Static API keys for scripts and home-lab tools that have no Firebase account.

Keys are random (``fnk_`` + 32 bytes, base64url), so SHA-256 is the right
hash: nothing to brute-force, nothing slow on the event loop (a per-request
bcrypt is what stalls some peers). Only the hashes are configured; every
configured hash is compared, in constant time, on every check.

Configured entries are ``name:role:sha256hex`` with role ``user`` or
``admin``, optionally followed by the key's scope, space-separated
``field=value`` terms (``fognode apikey create`` writes them), on one line::

    study:user:<sha256hex> models=llama3.2:1b,qwen2.5:0.5b
        expires=2027-01-06T12:00:00Z tier=study class=batch

A shared node hands out keys for a purpose (a study's app, a teammate's
script): ``models`` are the only models the key may use, ``expires`` the
moment it stops working (checked at each request, so it needs no reload),
``tier`` and ``class`` its budgets and its queue, ahead of any other rule.
An entry without terms is what it always was: every model, forever.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..moments import iso_utc, parse_moment
from .errors import AuthError
from .principal import Principal

PREFIX = "fnk_"
TERMS = ("models", "expires", "tier", "class")


@dataclass(frozen=True)
class ApiKeyEntry:
    name: str
    admin: bool
    digest: bytes
    models: tuple[str, ...] | None = None  # None: every model the node serves
    expires: float | None = None  # Unix time; None: never
    tier: str | None = None  # its budgets (quota_tiers), ahead of quota_api_key_tiers
    priority: str | None = None  # its class (priority_classes), ahead of any other rule

    @classmethod
    def parse(cls, line: str) -> ApiKeyEntry:
        head, *terms = line.split() or [""]
        parts = head.split(":")
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
        scope = _terms(name, terms)
        return cls(
            name,
            role == "admin",
            digest,
            models=tuple(scope["models"].split(",")) if "models" in scope else None,
            expires=parse_expiry(scope["expires"], name) if "expires" in scope else None,
            tier=scope.get("tier"),
            priority=scope.get("class"),
        )

    def line(self) -> str:
        """The entry as the key file and FOGNODE_API_KEYS hold it."""
        head = f"{self.name}:{'admin' if self.admin else 'user'}:{self.digest.hex()}"
        return " ".join([head, *(f"{k}={v}" for k, v in self.terms().items())])

    def terms(self) -> dict[str, str]:
        """The scope, as written (empty: an unscoped key)."""
        given = {
            "models": ",".join(self.models) if self.models is not None else None,
            "expires": iso_utc(self.expires) if self.expires is not None else None,
            "tier": self.tier,
            "class": self.priority,
        }
        return {k: v for k, v in given.items() if v is not None}

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def principal(self) -> Principal:
        return Principal(
            uid=f"apikey:{self.name}",
            kind="api_key",
            is_admin=self.admin,
            models=self.models,
            tier=self.tier,
            priority=self.priority,
        )


def _terms(name: str, terms: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for term in terms:
        field, sep, value = term.partition("=")
        if not sep or field not in TERMS:
            # A term is never echoed: a key pasted after the hash would be.
            raise ValueError(
                f"API key entry for {name!r} has a term that is not one of "
                f"{', '.join(t + '=' for t in TERMS)}"
            )
        if field in found:
            raise ValueError(f"API key entry for {name!r} gives {field}= twice")
        if not value or (field == "models" and "" in value.split(",")):
            raise ValueError(f"API key entry for {name!r} has an empty {field}=")
        if PREFIX in value:
            raise ValueError(f"API key entry for {name!r} has a key in its {field}=")
        found[field] = value
    return found


def parse_expiry(text: str, name: str = "") -> float:
    """An ISO 8601 moment (``2027-01-06T12:00:00Z``; without a zone: UTC) as Unix time."""
    try:
        return parse_moment(text)
    except ValueError:
        whose = f"API key entry for {name!r}: " if name else ""
        raise ValueError(
            f"{whose}expires={text!r} is not a moment like 2027-01-06T12:00:00Z"
        ) from None


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def entry_for(
    key: str,
    name: str,
    *,
    admin: bool,
    models: Iterable[str] | None = None,
    expires: float | None = None,
    tier: str | None = None,
    priority: str | None = None,
) -> str:
    digest = hashlib.sha256(key.encode()).digest()
    scoped = tuple(models) if models is not None else None
    return ApiKeyEntry(name, admin, digest, scoped, expires, tier, priority).line()


def looks_like_api_key(token: str) -> bool:
    return token.startswith(PREFIX)


def split_entries(text: str) -> list[str]:
    """FOGNODE_API_KEYS as comma-separated entries: a comma inside an entry's
    ``models=`` list stays with it (a new entry starts with ``name:role:``)."""
    entries: list[str] = []
    for part in text.split(","):
        piece = part.strip()
        if entries and not _starts_entry(piece):
            entries[-1] += "," + piece
        elif piece:
            entries.append(piece)
    return entries


def _starts_entry(piece: str) -> bool:
    parts = piece.split(":", 2)
    return len(parts) == 3 and parts[1] in ("user", "admin") and " " not in parts[0]


class ApiKeys:
    """One set of keys, never changed: a reload makes a new set and the
    authorizer swaps it in whole (TokenAuthorizer.use_keys)."""

    def __init__(
        self, entries: Iterable[ApiKeyEntry], clock: Callable[[], float] = time.time
    ) -> None:
        self.entries = tuple(entries)
        self.clock = clock

    def __bool__(self) -> bool:
        return bool(self.entries)

    def check(self, key: str) -> Principal | None:
        """The key's caller; None for a key not known here; AuthError for one
        that expired (looked at on every request, not only at a reload)."""
        digest = hashlib.sha256(key.encode()).digest()
        found: ApiKeyEntry | None = None
        for entry in self.entries:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        if found is None:
            return None
        if found.expires is not None and found.expired(self.clock()):
            raise AuthError(
                "api_key_expired",
                f"The API key expired at {iso_utc(found.expires)}; ask the node's operator "
                "for a new one.",
            )
        return found.principal()

    def named(self, name: str) -> ApiKeyEntry | None:
        """The key called ``name`` (for a report about its caller), if there is one."""
        return next((e for e in self.entries if e.name == name), None)

    def standing(self, name: str) -> Principal | None:
        """The caller of key ``name`` as a request with the key would be
        admitted now; None once it was revoked (or replaced) or has expired."""
        entry = self.named(name)
        if entry is None or entry.expired(self.clock()):
            return None
        return entry.principal()
