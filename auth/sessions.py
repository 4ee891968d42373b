"""Browser sessions for the operator's pages: signed cookies and CSRF tokens.

A browser cannot send a bearer header, so an administrator signs in once
with a credential the authorizer accepts (an admin API key or a Firebase
admin's ID token) and gets a session: a token signed with the node's own
key (itsdangerous, HMAC-SHA256), carrying who signed in and when. Nothing is
stored per session, so sessions survive a restart and cost no memory; the
price is that a session cannot be looked up and ended from the server side,
except by the small revocation list sign-out fills (bounded, kept until the
sessions on it expire anyway) or by replacing the key (every browser is
signed out).

Each session has a CSRF token derived from its random id with the same key:
a page embeds it, and a request that changes something must send it back. A
page of another site can make the browser send the cookie (SameSite=Strict
already stops that in current browsers) but cannot read the token.

The sign-in form itself gets a token tied to a random nonce in a
short-lived cookie (double submit), so a form on another site cannot sign
the browser in with the attacker's credential.

This module knows no HTTP: the gateway reads and sets the cookies.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from itsdangerous import BadData, Signer, TimestampSigner, URLSafeTimedSerializer

from .principal import Principal

log = logging.getLogger("fognode.auth")

KEY_BYTES = 32
# How long the sign-in form stays usable after it was shown.
FORM_LIFETIME = 3600.0
# Sign-outs remembered until their sessions would have expired anyway.
MAX_REVOKED = 10_000


def load_or_create_key(path: Path) -> bytes:
    """The signing key in ``path``, made on first use with mode 0600.

    Blocking file I/O: call it off the event loop. A key file others can
    read is tightened to 0600 (and said so), since whoever reads it can
    forge sessions.
    """
    # A fresh data directory (a node id set by the operator makes nothing in it first).
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    key = secrets.token_bytes(KEY_BYTES)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.hex() + "\n")
    log.info("made a new key for status page sessions in %s", path)
    return key


def _read_key(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("the session key %s was readable by others (mode %o); made it 0600", path, mode)
        path.chmod(0o600)
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (ValueError, UnicodeDecodeError):
        key = b""
    if len(key) < KEY_BYTES:
        raise ValueError(
            f"the session key in {path} is not {KEY_BYTES} bytes in hex; delete it for a new one"
        )
    return key


@dataclass(frozen=True)
class Session:
    """Who signed in, as the signed cookie says."""

    uid: str
    kind: str  # the credential's kind: "api_key" or "firebase"
    is_admin: bool
    sid: str  # random: names the session for its CSRF token and sign-out
    issued: float  # Unix time

    def principal(self) -> Principal:
        return Principal(uid=self.uid, kind=self.kind, is_admin=self.is_admin)


class SessionSigner:
    def __init__(
        self, key: bytes, *, lifetime: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.lifetime = lifetime
        self._clock = clock

        class Stamped(TimestampSigner):
            def get_timestamp(self) -> int:  # the same clock for stamps and ages
                return int(clock())

        def serializer(salt: str) -> URLSafeTimedSerializer:
            return URLSafeTimedSerializer(
                key, salt=salt, signer=Stamped, signer_kwargs={"digest_method": hashlib.sha256}
            )

        self._sessions = serializer("fognode.session")
        self._forms = serializer("fognode.signin-form")
        self._csrf = Signer(key, salt="fognode.csrf", digest_method=hashlib.sha256)
        self._revoked: OrderedDict[str, float] = OrderedDict()  # sid -> when it expires

    # --- sessions ---------------------------------------------------------------
    def issue(self, principal: Principal) -> tuple[str, Session]:
        """A new session for ``principal``: the cookie value, and what it says."""
        session = Session(
            uid=principal.uid,
            kind=principal.kind,
            is_admin=principal.is_admin,
            sid=secrets.token_urlsafe(16),
            issued=self._clock(),
        )
        payload = [session.uid, session.kind, session.is_admin, session.sid]
        return self._sessions.dumps(payload), session

    def open(self, token: str | None) -> Session | None:
        """The session a cookie value stands for; None if it is missing, forged,
        expired or signed out."""
        if not token:
            return None
        try:
            payload, issued = self._sessions.loads(
                token, max_age=int(self.lifetime), return_timestamp=True
            )
        except BadData:
            return None
        try:
            uid, kind, is_admin, sid = payload
        except (TypeError, ValueError):
            return None
        if sid in self._revoked:
            return None
        return Session(str(uid), str(kind), bool(is_admin), str(sid), issued.timestamp())

    def revoke(self, session: Session) -> float:
        """Sign-out: this session is refused from now on, even if its cookie
        was kept. Returns until when (it would have expired then anyway), for
        other processes of the node to refuse it as long."""
        until = session.issued + self.lifetime
        self.refuse(session.sid, until)
        return until

    def refuse(self, sid: str, until: float) -> None:
        """Refuse session ``sid`` until it would expire anyway (a sign-out here,
        or in another worker process of the node)."""
        now = self._clock()
        while self._revoked and (
            next(iter(self._revoked.values())) <= now or len(self._revoked) >= MAX_REVOKED
        ):
            self._revoked.popitem(last=False)
        self._revoked[sid] = until

    # --- CSRF -------------------------------------------------------------------
    def csrf_token(self, session: Session) -> str:
        return self._csrf.get_signature(session.sid).decode()

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        if not token:
            return False
        return hmac.compare_digest(self.csrf_token(session).encode(), token.encode())

    # --- the sign-in form (before there is a session) -----------------------------
    def form(self) -> tuple[str, str]:
        """A nonce for the browser's cookie and the token for the form."""
        nonce = secrets.token_urlsafe(16)
        return nonce, self._forms.dumps(nonce)

    def form_ok(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token:
            return False
        try:
            signed = self._forms.loads(token, max_age=int(FORM_LIFETIME))
        except BadData:
            return False
        return isinstance(signed, str) and hmac.compare_digest(signed.encode(), nonce.encode())
