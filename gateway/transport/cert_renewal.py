"""Keep the served certificate current: reload files that changed, warn when they lapse.

The serving process never signs anything and never reads a CA key
(ARCHITECTURE.md, Trust): `fognode certs renew`, run by another user (the
fognode-certs timer, the compose fognode-certs service, or the operator),
writes the new files. Every `cert_check_interval` seconds (in a thread: it
reads files) this keeper looks: replaced files are checked and loaded,
open connections keep theirs; a certificate within
`cert_renew_before_days` of its end that nothing has replaced gets a
warning saying where renewal should have come from. Swapping the new
certificate in is the terminator's (tls.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from ...certs.errors import CertError
from ...certs.lifecycle import ServerPair, renewal_reason
from .tls import TlsTerminator

log = logging.getLogger("fognode.tls")


@dataclass(frozen=True)
class RenewalOptions:
    renew_before_days: float
    check_interval: float


# An overdue renewal is said at most this often (seconds): the files are
# looked at every minute, so that a renewal reaches the clients soon.
OVERDUE_WARNING_EVERY = 3600.0


class CertificateKeeper:
    def __init__(self, tls: TlsTerminator, options: RenewalOptions) -> None:
        self.tls = tls
        self.options = options
        self.reloads = 0
        self._warned: float | None = None  # when the overdue renewal was last said

    @property
    def pair(self) -> ServerPair | None:
        return self.tls.pair

    def check_once(self) -> str | None:
        """Reload changed files; warn when renewal is overdue. Blocking: run it
        in a thread. Returns what was done, for the log and the tests."""
        if self.tls.changed_on_disk():
            try:
                self.tls.load()
            except CertError as exc:
                # Possibly caught between the key and the chain being written;
                # keep serving the old pair and look again next time.
                log.warning("certificate files changed but cannot be used yet: %s", exc)
            else:
                self.reloads += 1
                assert self.pair is not None
                log.info(
                    "reloaded the server certificate from %s (valid until %s)",
                    self.tls.cert_file,
                    self.pair.leaf.not_valid_after_utc.isoformat(),
                )
                return "reloaded"
        assert self.pair is not None
        reason = renewal_reason(
            self.pair.leaf, renew_before=dt.timedelta(days=self.options.renew_before_days)
        )
        if reason is None:
            return None
        now = time.monotonic()
        if self._warned is None or now - self._warned >= OVERDUE_WARNING_EVERY:
            self._warned = now
            log.warning(
                "the server certificate should have been renewed (%s): this process never "
                "signs; check the renewal (systemctl status fognode-certs.timer, the compose "
                "fognode-certs service) or run `fognode certs renew`",
                reason,
            )
        return "renewal-overdue"

    async def watch(self, on_change: Callable[[], None] | None = None) -> None:
        """Check the certificate periodically until cancelled; ``on_change`` after
        each reload (worker processes then load the new files)."""
        interval = self.options.check_interval
        while True:
            await asyncio.sleep(interval)
            try:
                done = await asyncio.to_thread(self.check_once)
                if done == "reloaded" and on_change is not None:
                    on_change()
            except Exception:
                log.exception("certificate check failed")


# The keeper, where this process watches the files (one process; the supervisor
# of worker processes watches without an app): the node's lifecycle runs watch().
CERTIFICATES = web.AppKey("fognode.certificates", CertificateKeeper)
