"""Who may call a route: the seam between routing and the auth step.

Every route is registered with an :class:`Access` level. The access middleware
asks the configured :class:`Authorizer` to admit the request at that level
before any handler runs, so a new route cannot forget to be protected: a route
without a level is refused.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web


class Access(enum.Enum):
    PUBLIC = "public"  # health probes: no credentials, no upstream work
    USER = "user"  # inference and model listing
    ADMIN = "admin"  # model management: pull, push, create, copy, delete


@dataclass(frozen=True)
class Principal:
    """The caller as the auth step established it."""

    uid: str
    kind: str  # "firebase", "api_key", "anonymous"
    claims: dict[str, Any] = field(default_factory=dict)
    is_admin: bool = False


ANONYMOUS = Principal(uid="anonymous", kind="anonymous")


class Authorizer(Protocol):
    async def authorize(self, request: web.Request, access: Access) -> Principal:
        """Return the caller or raise a GatewayError (401/403)."""
        ...


class OpenAccess:
    """Admits everyone. Only for development on loopback; auth/ replaces it."""

    async def authorize(self, request: web.Request, access: Access) -> Principal:
        return ANONYMOUS


ACCESS_BY_ROUTE = web.AppKey("fognode.access_by_route", dict)
AUTHORIZER = web.AppKey("fognode.authorizer", object)
PRINCIPAL = web.RequestKey("fognode.principal", Principal)
