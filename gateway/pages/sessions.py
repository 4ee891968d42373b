"""Signing in from a browser, for the operator's pages.

Where the cookie counts: the access stage (access.py) asks
:meth:`BrowserSessions.admit` for routes declared ``page=True`` in the route
table, and only for those; the API keeps its bearer credentials and never
reads the cookie. A session admits a request only at the level it was made
for (administrators: sessions are only made for them), and a request that
changes something (any method but GET and HEAD) only with the session's CSRF
token, in the ``X-CSRF-Token`` header (the page's script) or the ``csrf``
field of a small form (the sign-out button). So the check sits before the
body is read by anyone else, in one place no page route can miss.

Signing in (``POST /signin``) takes what the API takes, an admin API key or
a Firebase admin's ID token, and checks it with the same authorizer. The
form carries its own CSRF token (auth/sessions.py), and attempts are slowed
down per client address (auth/throttle.py): each failure doubles the wait
before the next attempt is even looked at (429 with Retry-After). The
throttle is the node's: with worker processes it lives in the supervisor,
and a worker asks it over its channel (:class:`SignInThrottle`: a
:class:`LocalSignInThrottle` here, worker.RemoteSignInThrottle there), so
more workers never give a guesser more attempts.

The cookies are ``__Host-`` cookies: HttpOnly (no script reads them),
Secure (sent over HTTPS only; browsers accept that on http://localhost too,
so a plain-HTTP development node works from its own machine),
SameSite=Strict (never sent with a request another site starts), Path=/ and
no Domain. The session cookie lasts ``session_lifetime``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from aiohttp import web

from ...auth.errors import AuthError, VerifierUnavailable
from ...auth.principal import Access, Principal
from ...auth.sessions import FORM_LIFETIME, Session, SessionSigner, load_or_create_key
from ...auth.throttle import FailureThrottle
from ...web.status import render_signin
from ..core.errors import GatewayError
from ..pipeline.access import AUTHORIZER
from ..pipeline.routes import RouteSpec, add_route
from ..telemetry.metrics import Metrics
from ..transport.connections import client_key

log = logging.getLogger("fognode.auth")

SESSION_COOKIE = "__Host-fognode-session"
FORM_COOKIE = "__Host-fognode-signin"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
SAFE_METHODS = frozenset({"GET", "HEAD"})
# A form holds a credential (an ID token is about 1 KB, at most 16 KB) and a token.
MAX_FORM_BYTES = 20 * 1024
SIGN_IN, SIGN_OUT, HOME = "/signin", "/signout", "/"

SESSION = web.RequestKey("fognode.session", Session)


@dataclass(frozen=True)
class SessionOptions:
    key_file: Path  # the signing key, made at first start (0600)
    lifetime: float  # seconds a sign-in lasts
    body_timeout: float  # longest a form may take to arrive
    # Where setup.sh (or the service's install) left an admin key, named on
    # the sign-in form: this node's data dir, not any home directory's.
    admin_key_file: Path | None = None


class SignInThrottle(Protocol):
    """The node's sign-in throttle as the sign-in asks it (auth/throttle.py's
    rule): in this process, or the supervisor's, over a worker's channel."""

    async def retry_after(self, client: str) -> float:
        """Seconds before ``client`` may try again (0: now)."""
        ...

    async def attempt(self, client: str) -> None:
        """An attempt starts: a failure unless :meth:`succeeded` follows."""
        ...

    def succeeded(self, client: str) -> None: ...


class LocalSignInThrottle:
    """The throttle held by this process (the node's, when it is the node or
    its supervisor)."""

    def __init__(self, failures: FailureThrottle | None = None) -> None:
        self.failures = failures or FailureThrottle()

    async def retry_after(self, client: str) -> float:
        return self.failures.retry_after(client)

    async def attempt(self, client: str) -> None:
        self.failures.attempt(client)

    def succeeded(self, client: str) -> None:
        self.failures.succeeded(client)


class BrowserSessions:
    """The sessions of the operator's pages: made at sign-in, checked by the access stage."""

    def __init__(self, options: SessionOptions, throttle: SignInThrottle | None = None) -> None:
        self.options = options
        self.throttle = throttle or LocalSignInThrottle()
        self._signer: SessionSigner | None = None
        # Told of each sign-out (sid, when the session would expire) before its
        # answer goes out: a worker process waits until the supervisor has told
        # every other worker, so the kept cookie opens no page anywhere after.
        self.signed_out: list[Callable[[str, float], Awaitable[None]]] = []

    async def start(self) -> None:
        key = await asyncio.to_thread(load_or_create_key, self.options.key_file)
        self._signer = SessionSigner(key, lifetime=self.options.lifetime)

    @property
    def signer(self) -> SessionSigner:
        assert self._signer is not None, "the app has not started"
        return self._signer

    async def sign_out(self, session: Session) -> None:
        until = self.signer.revoke(session)
        for tell in self.signed_out:
            await tell(session.sid, until)

    def session_of(self, request: web.Request) -> Session | None:
        return self.signer.open(request.cookies.get(SESSION_COOKIE))

    async def admit(self, request: web.Request, access: Access) -> Principal | None:
        session = self.session_of(request)
        if session is None:
            return None
        if access is Access.ADMIN and not session.is_admin:
            return None  # (sessions are made for administrators only)
        if not self._key_stands(request, session):
            return None
        if request.method not in SAFE_METHODS:
            token = request.headers.get(CSRF_HEADER)
            if token is None:
                token = (await read_form(request, self.options.body_timeout)).get(CSRF_FIELD)
            if not self.signer.csrf_ok(session, token):
                raise GatewayError(
                    403,
                    "This request changes something and lacks the page's CSRF token: "
                    "reload the page and try again.",
                    code="csrf_failed",
                )
        request[SESSION] = session
        return session.principal()

    def _key_stands(self, request: web.Request, session: Session) -> bool:
        """A session made with an API key lasts only as long as the key would
        sign in now: revoked, expired, no longer an administrator's, or kept to
        some models, and the session ends with it (on every worker: each
        follows the key file). A Firebase session lasts its lifetime."""
        principal = session.principal()
        if principal.kind != "api_key":
            return True
        now = request.app[AUTHORIZER].key_standing(principal.uid.removeprefix("apikey:"))
        if now is not None and now.is_admin and now.models is None:
            return True
        self.signer.refuse(session.sid, session.issued + self.signer.lifetime)
        return False

    def sign_in_first(self, request: web.Request) -> Exception:
        if request.method in SAFE_METHODS:
            return web.HTTPSeeOther(SIGN_IN, headers={"Cache-Control": "no-store"})
        return GatewayError(
            401, "Sign in first (the session ended or was never started).", code="signed_out"
        )

    def set_session(self, response: web.StreamResponse, principal: Principal) -> Session:
        """A session for a caller the authorizer admitted at the admin level
        (under auth=none it admits anyone, without marking them admin)."""
        token, session = self.signer.issue(replace(principal, is_admin=True))
        _set_cookie(response, SESSION_COOKIE, token, int(self.options.lifetime))
        return session


SESSIONS = web.AppKey("fognode.sessions", BrowserSessions)


def _set_cookie(response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="Strict"
    )


def _drop_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/", secure=True, httponly=True, samesite="Strict")


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


async def read_form(request: web.Request, within: float) -> Mapping[str, str]:
    """A small urlencoded form (sign-in, sign-out); anything else reads as empty.

    aiohttp keeps what it parsed, so a handler reading the form again gets
    the same fields without reading the body twice.
    """
    if request.content_type != "application/x-www-form-urlencoded":
        return {}
    size = request.content_length
    if size is None or size > MAX_FORM_BYTES:
        raise GatewayError(
            413, f"A form may be at most {MAX_FORM_BYTES} bytes.", code="form_too_large"
        )
    try:
        async with asyncio.timeout(within):
            form = await request.post()
    except TimeoutError:
        raise GatewayError(408, "The form did not arrive in time.", code="body_timeout") from None
    return {k: v for k, v in form.items() if isinstance(v, str)}


def setup_sessions(app: web.Application, sessions: BrowserSessions, metrics: Metrics) -> None:
    """Sign-in and sign-out routes; the access stage checks the sessions they make."""

    app[SESSIONS] = sessions

    async def start(app: web.Application) -> None:
        await sessions.start()

    def form_page(
        request: web.Request, message: str | None = None, status: int = 200
    ) -> web.Response:
        nonce, token = sessions.signer.form()
        response = render_signin(
            request,
            csrf=token,
            message=message,
            status=status,
            admin_key=str(sessions.options.admin_key_file or "") or None,
        )
        _set_cookie(response, FORM_COOKIE, nonce, int(FORM_LIFETIME))
        return response

    async def signin_form(request: web.Request) -> web.StreamResponse:
        if sessions.session_of(request) is not None:
            return _see_other(HOME)
        return form_page(request)

    async def signin(request: web.Request) -> web.StreamResponse:
        client = client_key(request.remote or "?")
        wait = await sessions.throttle.retry_after(client)
        if wait > 0:
            seconds = max(1, round(wait + 0.5))
            response = form_page(
                request,
                f"Too many failed sign-ins from this address: try again in {seconds} s.",
                429,
            )
            response.headers["Retry-After"] = str(seconds)
            return response
        form = await read_form(request, sessions.options.body_timeout)
        if not sessions.signer.form_ok(request.cookies.get(FORM_COOKIE), form.get(CSRF_FIELD)):
            return form_page(
                request,
                "The sign-in form expired or came from another page; it was reloaded, try again.",
                403,
            )
        credential = form.get("credential", "").strip()
        await sessions.throttle.attempt(client)  # a failure until it succeeds
        try:
            authorizer = request.app[AUTHORIZER]
            principal = await authorizer.authorize(f"Bearer {credential}", Access.ADMIN)
        except AuthError as exc:
            log.info("sign-in refused from %s (%d %s)", request.remote, exc.status, exc.reason)
            metrics.auth_failures.labels(exc.reason).inc()
            return form_page(request, f"Not signed in: {exc.message}", exc.status)
        except VerifierUnavailable as exc:
            return form_page(request, f"Cannot verify tokens right now: {exc}", 503)
        if principal.models is not None:
            # The page pulls models for everyone: beyond a key kept to some models.
            return form_page(
                request,
                "Not signed in: this API key may use only some models; the status page "
                "needs a key made without --models.",
                403,
            )
        sessions.throttle.succeeded(client)
        response = _see_other(HOME)
        sessions.set_session(response, principal)
        _drop_cookie(response, FORM_COOKIE)
        log.info("signed in to the status page: %s from %s", principal.uid, request.remote)
        return response

    async def signout(request: web.Request) -> web.StreamResponse:
        # The access stage admitted the request (with its CSRF token, if by session).
        session = request.get(SESSION)
        if session is not None:
            await sessions.sign_out(session)
            log.info("signed out of the status page: %s", session.uid)
        response = _see_other(SIGN_IN)
        _drop_cookie(response, SESSION_COOKIE)
        return response

    app.on_startup.append(start)
    add_route(app, RouteSpec("GET", SIGN_IN, Access.PUBLIC, page=True), signin_form)
    add_route(app, RouteSpec("POST", SIGN_IN, Access.PUBLIC, page=True), signin)
    add_route(app, RouteSpec("POST", SIGN_OUT, Access.ADMIN, page=True), signout)
