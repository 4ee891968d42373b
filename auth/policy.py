"""The operator's access policy: beyond "the token is real", "may this user do this".

Rules apply in a fixed order and the first that fails is named in the 403,
so an operator reading a user's complaint knows which setting to change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import PolicyError
from .principal import Access, Principal


@dataclass(frozen=True)
class AccessPolicy:
    required_claims: Mapping[str, Any]
    allowed_uids: frozenset[str]
    allowed_email_domains: frozenset[str]
    require_email_verified: bool
    admin_claim: str

    @classmethod
    def build(
        cls,
        *,
        required_claims: Mapping[str, Any] | None = None,
        allowed_uids: Iterable[str] = (),
        allowed_email_domains: Iterable[str] = (),
        require_email_verified: bool = False,
        admin_claim: str = "admin",
    ) -> AccessPolicy:
        return cls(
            dict(required_claims or {}),
            frozenset(allowed_uids),
            frozenset(d.lower().lstrip("@") for d in allowed_email_domains),
            require_email_verified,
            admin_claim,
        )

    def is_admin(self, claims: Mapping[str, Any]) -> bool:
        return claims.get(self.admin_claim) is True

    def check(self, principal: Principal, access: Access) -> None:
        if principal.kind == "firebase":
            self._check_user(principal)
        if access is Access.ADMIN and not principal.is_admin:
            raise PolicyError(
                "admin_required",
                f"Model management needs an administrator: the '{self.admin_claim}' claim "
                "set to true (fognode claims set --admin UID), or an admin API key.",
            )

    def _check_user(self, principal: Principal) -> None:
        claims = principal.claims
        if self.allowed_uids and principal.uid not in self.allowed_uids:
            raise PolicyError(
                "uid_not_allowed",
                f"User {principal.uid} is not in this node's allowed users (FOGNODE_ALLOWED_UIDS).",
            )
        if self.allowed_email_domains:
            email = (principal.email or "").lower()
            domain = email.rpartition("@")[2] if "@" in email else ""
            if domain not in self.allowed_email_domains:
                raise PolicyError(
                    "email_domain_not_allowed",
                    f"The account's email domain {domain or '(no email)'!s} is not allowed on "
                    "this node (FOGNODE_ALLOWED_EMAIL_DOMAINS).",
                )
        if self.require_email_verified and claims.get("email_verified") is not True:
            raise PolicyError(
                "email_not_verified",
                "This node requires a verified email address (FOGNODE_REQUIRE_EMAIL_VERIFIED).",
            )
        for name, wanted in self.required_claims.items():
            have = claims.get(name)
            ok = (
                have in wanted
                if isinstance(wanted, list) and not isinstance(have, list)
                else (have == wanted)
            )
            if not ok:
                raise PolicyError(
                    "missing_claim",
                    f"The token lacks the custom claim {name}={wanted!r} this node requires "
                    "(FOGNODE_REQUIRED_CLAIMS; grant it with `fognode claims set`).",
                )
