"""Who may call a route: the seam between routing and the auth step.

Every route is registered with an :class:`Access` level. The access middleware
asks the configured :class:`Authorizer` to admit the request at that level
before any handler runs, so a new route cannot forget to be protected: a route
without a level is refused.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from ..auth.principal import Access, Principal


class Authorizer(Protocol):
    async def authorize(self, authorization: str | None, access: Access) -> Principal:
        """Return the caller, or raise auth.errors.AuthError (401/403)."""
        ...

    def close(self) -> None: ...


ACCESS_BY_ROUTE = web.AppKey("fognode.access_by_route", dict)
AUTHORIZER = web.AppKey("fognode.authorizer", object)
PRINCIPAL = web.RequestKey("fognode.principal", Principal)

__all__ = ["ACCESS_BY_ROUTE", "AUTHORIZER", "PRINCIPAL", "Access", "Authorizer", "Principal"]
