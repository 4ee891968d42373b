"""Keep the served certificate valid: reload files that changed, renew before expiry.

The policy, checked every `cert_check_interval` seconds (in a thread: it
reads files and signs): certificate files replaced on disk (by `fognode
certs issue` from cron, or another tool) are checked and loaded; a
certificate that expires within `cert_renew_before_days`, or lacks a name
the operator configured, is renewed with the node's own CA when its
passphrase is available, and a warning says what to do when it is not.
Swapping the new certificate in is the terminator's (tls.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ...certs.errors import CertError
from ...certs.issuer import SubjectNames, cert_names, default_names
from ...certs.keys import KeyType
from ...certs.lifecycle import ServerPair, issue_to_files, renewal_reason
from ...certs.passphrase import read_passphrase_file
from ...certs.store import CertPaths
from ..config.network import lan_addresses
from .tls import TlsTerminator

log = logging.getLogger("fognode.tls")


@dataclass(frozen=True)
class RenewalOptions:
    certs_dir: Path
    names: tuple[str, ...] | None  # what the certificate must carry, if configured
    key_type: KeyType
    validity_days: float
    renew_before_days: float
    check_interval: float
    passphrase: bytes | None  # the CA key's, if configured directly
    passphrase_file: Path | None


class CertificateKeeper:
    def __init__(self, tls: TlsTerminator, options: RenewalOptions) -> None:
        self.tls = tls
        self.options = options
        self.reloads = 0
        self.renewals = 0

    @property
    def pair(self) -> ServerPair | None:
        return self.tls.pair

    def wanted_names(self) -> SubjectNames | None:
        """Names the certificate must carry, when the operator configured them."""
        if self.options.names:
            return SubjectNames.parse(self.options.names)
        return None

    def renewal_names(self) -> SubjectNames:
        """Configured names, else exactly those of the current certificate, so a
        renewal never drops a name the operator issued by hand."""
        wanted = self.wanted_names()
        if wanted is not None:
            return wanted
        if self.pair is not None:
            current = cert_names(self.pair.leaf)
            if current.dns:
                return current
        return SubjectNames.parse(default_names(str(ip) for ip in lan_addresses()))

    def passphrase(self) -> bytes | None:
        if self.options.passphrase is not None:
            return self.options.passphrase
        if self.options.passphrase_file is not None:
            return read_passphrase_file(self.options.passphrase_file)
        # Where setup.sh leaves a generated passphrase.
        beside = self.options.certs_dir / "ca.passphrase"
        if beside.is_file():
            return read_passphrase_file(beside)
        return None

    def check_once(self) -> str | None:
        """Reload changed files, renew if due. Blocking: run it in a thread.

        Returns what was done, for the log and the tests.
        """
        if self.tls.changed_on_disk():
            try:
                self.tls.load()
            except CertError as exc:
                # Possibly caught between the key and the chain being written;
                # keep serving the old pair and look again next time.
                log.warning("certificate files changed but cannot be used yet: %s", exc)
            else:
                self.reloads += 1
                log.info("reloaded the server certificate from %s", self.tls.cert_file)
                return "reloaded"
        assert self.pair is not None
        reason = renewal_reason(
            self.pair.leaf,
            renew_before=dt.timedelta(days=self.options.renew_before_days),
            wanted=self.wanted_names() if self._uses_own_ca() else None,
        )
        if reason is None:
            return None
        passphrase = self.passphrase()
        if not self._uses_own_ca() or passphrase is None:
            log.warning(
                "the server certificate should be renewed (%s) but the CA key passphrase is "
                "not configured; run `fognode certs issue` or set FOGNODE_CA_PASSPHRASE_FILE",
                reason,
            )
            return "renewal-needed"
        log.info("renewing the server certificate: %s", reason)
        issue_to_files(
            CertPaths(self.options.certs_dir),
            passphrase,
            self.renewal_names(),
            key_type=self.options.key_type,
            validity_days=self.options.validity_days,
        )
        self.tls.load()
        self.renewals += 1
        log.info(
            "renewed: new certificate valid until %s",
            self.pair.leaf.not_valid_after_utc.isoformat(),
        )
        return "renewed"

    def _uses_own_ca(self) -> bool:
        """Renewal only makes sense for files fognode itself manages."""
        paths = CertPaths(self.options.certs_dir)
        return (
            self.tls.cert_file == paths.server_cert
            and self.tls.key_file == paths.server_key
            and paths.ca_key.exists()
        )

    async def watch(self, on_change: Callable[[], None] | None = None) -> None:
        """Check the certificate periodically until cancelled; ``on_change`` after
        each reload or renewal (worker processes then load the new files)."""
        interval = self.options.check_interval
        while True:
            await asyncio.sleep(interval)
            try:
                done = await asyncio.to_thread(self.check_once)
                if done in ("reloaded", "renewed") and on_change is not None:
                    on_change()
            except CertError as exc:
                log.error("certificate renewal failed: %s", exc)
            except Exception:
                log.exception("certificate check failed")


CERTIFICATES = web.AppKey("fognode.certificates", CertificateKeeper)


def setup_certificate_renewal(app: web.Application, keeper: CertificateKeeper) -> None:
    app[CERTIFICATES] = keeper

    async def watching(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(keeper.watch(), name="fognode-cert-watch")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(watching)
