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


ANONYMOUS = Principal(uid="anonymous", kind="anonymous")
