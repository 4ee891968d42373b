"""The vocabulary shared by the gateway and the auth step."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Access(enum.Enum):
    PUBLIC = "public"  # health probes: no credentials
    USER = "user"  # inference and model listing
    ADMIN = "admin"  # model management: pull, push, create, copy, delete


@dataclass(frozen=True)
class Principal:
    """The caller, once authenticated."""

    uid: str
    kind: str  # "firebase", "api_key", "anonymous"
    claims: dict[str, Any] = field(default_factory=dict)
    is_admin: bool = False
    email: str | None = None
    # An API key's scope (auth/api_keys.py): the only models it may use (None:
    # every one), and the tier and priority class it was made with (None: the
    # node's rules decide).
    models: tuple[str, ...] | None = None
    tier: str | None = None
    priority: str | None = None


ANONYMOUS = Principal(uid="anonymous", kind="anonymous")
