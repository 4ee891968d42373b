"""The access stage: who is calling, and may they use this route.

Every route is registered with an :class:`Access` level (routes.py). Before
any later stage runs, the authorizer (auth/) admits the request at that
level or refuses it with 401/403, so nothing unauthenticated reaches the
body parser, the queue or the upstream, and a route without a level is
refused outright.

The operator's pages (routes with ``page=True``) are what a browser opens,
and a browser cannot send a bearer header: for those routes only, a signed-in
browser's session cookie admits the request (``sessions``, gateway/pages/sessions.py,
which also checks the CSRF token of anything that changes something). A page
route also takes a bearer credential (a script with an admin key); without
either, a browser is sent to the sign-in form. API routes never look at the
cookie, so a session cannot be used against the API, nor a page of another
site make a browser call it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from ...auth.api_keys import ApiKeyEntry
from ...auth.errors import AuthError, VerifierUnavailable
from ...auth.principal import Access, Principal
from ..core.errors import GatewayError
from ..core.keys import FORWARDED, PRINCIPAL
from ..telemetry.metrics import Metrics
from .routes import spec_for

log = logging.getLogger("fognode.gateway")


class Authorizer(Protocol):
    async def authorize(self, authorization: str | None, access: Access) -> Principal:
        """Return the caller, or raise auth.errors.AuthError (401/403)."""
        ...

    @property
    def kinds(self) -> str:
        """What credentials it accepts: "firebase", "apikey", both with "+", or "none"."""
        ...

    def use_keys(self, entries: Iterable[ApiKeyEntry]) -> None:
        """Check API keys against these from now on (the key file changed)."""
        ...

    def key_caller(self, name: str) -> Principal | None:
        """The caller of this node's API key ``name`` (its role and scope), if
        it has one: for reports about them, without their key."""
        ...

    def key_standing(self, name: str) -> Principal | None:
        """The caller of API key ``name`` as its key would be admitted now:
        None once it was revoked or has expired (a status-page session made
        with it ends then too)."""
        ...

    def close(self) -> None: ...


AUTHORIZER: web.AppKey[Authorizer] = web.AppKey("fognode.authorizer")


class SessionCheck(Protocol):
    """Browser sessions for the operator's pages (gateway/pages/sessions.py)."""

    async def admit(self, request: web.Request, access: Access) -> Principal | None:
        """The signed-in administrator, or None when the request has no valid
        session; raises a GatewayError when it has one but lacks the CSRF token."""
        ...

    def sign_in_first(self, request: web.Request) -> Exception:
        """What to answer a browser that is not signed in."""
        ...


def setup_access(
    app: web.Application,
    metrics: Metrics,
    *,
    authorizer: Authorizer | None = None,
    build: Callable[[], Authorizer],
    sessions: SessionCheck | None = None,
) -> None:
    """Install the access check.

    An ``authorizer`` given by the caller is the caller's to close; otherwise
    one is built by ``build`` when the app starts (a bad configuration stops
    the start) and closed when it stops.
    """

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        own = authorizer is None
        app[AUTHORIZER] = build() if authorizer is None else authorizer
        yield
        if own:
            app[AUTHORIZER].close()

    @web.middleware
    async def access_control(request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = spec_for(request)
        if spec is None:
            if request.match_info.route.resource is None:
                return await handler(request)  # no route matched: the router's 404/405
            raise GatewayError(500, "Route has no access level; refusing.", code="misconfigured")
        if spec.access is not Access.PUBLIC and FORWARDED not in request:
            # (A forwarded request's caller is the entry node's assertion: peers.py.)
            if spec.page and sessions is not None:
                request[PRINCIPAL] = await _admit_page(request, spec.access, sessions)
            else:
                request[PRINCIPAL] = await _admit(request, spec.access)
        return await handler(request)

    async def _admit_page(request: web.Request, access: Access, check: SessionCheck) -> Principal:
        principal = await check.admit(request, access)
        if principal is not None:
            return principal
        if "Authorization" in request.headers:
            return await _admit(request, access)
        raise check.sign_in_first(request)

    async def _admit(request: web.Request, access: Access) -> Principal:
        try:
            return await request.app[AUTHORIZER].authorize(
                request.headers.get("Authorization"), access
            )
        except AuthError as exc:
            log.info("refused (%d %s): %s", exc.status, exc.reason, exc.message)
            metrics.auth_failures.labels(exc.reason).inc()
            raise GatewayError(
                exc.status,
                exc.message,
                code=exc.reason,
                headers={"WWW-Authenticate": exc.www_authenticate},
            ) from None
        except VerifierUnavailable as exc:
            raise GatewayError(
                503,
                f"Cannot verify tokens right now: {exc}",
                code="auth_unavailable",
                headers={"Retry-After": "5"},
            ) from None

    app.cleanup_ctx.append(lifecycle)
    app.middlewares.append(access_control)
