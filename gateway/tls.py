"""TLS termination: the server context, and certificate reload and renewal.

The listening socket keeps one SSL context for its whole life, so a new
certificate cannot simply replace it. Instead the listening context has a
server-name callback that OpenSSL runs for every ClientHello (with or
without SNI) and that switches the connection to the *current* context.
Renewal builds a complete new context from checked files and swaps it in:
new connections get the new certificate, open streams keep theirs, and a
half-written or mismatched pair never reaches a client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..certs.errors import CertError
from ..certs.issuer import SubjectNames, cert_names, default_names
from ..certs.lifecycle import ServerPair, issue_to_files, load_server_pair, renewal_reason
from ..certs.passphrase import read_passphrase_file
from ..certs.store import CertPaths
from .settings import Settings

log = logging.getLogger("fognode.tls")

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are
# fixed by OpenSSL and all modern.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _base_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@dataclass(frozen=True)
class _FileStamp:
    cert: tuple[int, int, int]
    key: tuple[int, int, int]

    @classmethod
    def of(cls, cert: Path, key: Path) -> _FileStamp | None:
        try:
            c, k = cert.stat(), key.stat()
        except FileNotFoundError:
            return None
        return cls((c.st_ino, c.st_mtime_ns, c.st_size), (k.st_ino, k.st_mtime_ns, k.st_size))


class TlsTerminator:
    """Owns the listening SSL context and keeps its certificate fresh."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cert_file = settings.server_cert_file
        self.key_file = settings.server_key_file
        self.ca_file = settings.ca_cert_file
        self.listening = _base_context()
        self.current: ssl.SSLContext | None = None
        self.pair: ServerPair | None = None
        self._stamp: _FileStamp | None = None
        self.reloads = 0
        self.renewals = 0

    # --- loading ------------------------------------------------------------
    def load(self) -> ServerPair:
        """Check and load the files; raise CertError with the reason if unusable.

        The bytes are read once, checked, and the context is built from a
        private copy of exactly those bytes, so a file replaced in between
        cannot slip an unchecked certificate in.
        """
        stamp = _FileStamp.of(self.cert_file, self.key_file)
        cert_bytes = _read(self.cert_file, "server certificate")
        key_bytes = _read(self.key_file, "server key")
        with tempfile.TemporaryDirectory(prefix="fognode-tls-") as tmp:
            cert_copy, key_copy = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            _write_private(cert_copy, cert_bytes)
            _write_private(key_copy, key_bytes)
            pair = load_server_pair(cert_copy, key_copy, self.ca_file)
            ctx = _base_context()
            try:
                ctx.load_cert_chain(cert_copy, key_copy)
            except ssl.SSLError as exc:
                raise CertError(f"OpenSSL refused the certificate pair: {exc}") from None
        if self.current is None:
            # Before the first swap the listening context must itself carry a
            # certificate, or OpenSSL fails the handshake before the callback.
            self.listening.load_cert_chain(self.cert_file, self.key_file)
            self.listening.sni_callback = self._pick_context
        self.current, self.pair, self._stamp = ctx, pair, stamp
        return pair

    def _pick_context(
        self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # Any name, or none at all (clients that connect by IP send no SNI),
        # gets the one server certificate.
        if self.current is not None:
            sock.context = self.current
        return None

    # --- reload and renewal ---------------------------------------------------
    def wanted_names(self) -> SubjectNames | None:
        """Names the certificate must carry, when the operator configured them."""
        if self.settings.cert_names:
            return SubjectNames.parse(self.settings.cert_names)
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
        return SubjectNames.parse(default_names())

    def passphrase(self) -> bytes | None:
        if self.settings.ca_passphrase is not None:
            return self.settings.ca_passphrase.get_secret_value().encode()
        if self.settings.ca_passphrase_file is not None:
            return read_passphrase_file(self.settings.ca_passphrase_file)
        # Where setup.sh leaves a generated passphrase.
        beside = self.settings.certs_dir / "ca.passphrase"
        if beside.is_file():
            return read_passphrase_file(beside)
        return None

    def check_once(self) -> str | None:
        """Reload changed files, renew if due. Blocking: run it in a thread.

        Returns what was done, for the log and the tests.
        """
        stamp = _FileStamp.of(self.cert_file, self.key_file)
        if stamp is not None and stamp != self._stamp:
            try:
                self.load()
            except CertError as exc:
                # Possibly caught between the key and the chain being written;
                # keep serving the old pair and look again next time.
                log.warning("certificate files changed but cannot be used yet: %s", exc)
            else:
                self.reloads += 1
                log.info("reloaded the server certificate from %s", self.cert_file)
                return "reloaded"
        assert self.pair is not None
        reason = renewal_reason(
            self.pair.leaf,
            renew_before=dt.timedelta(days=self.settings.cert_renew_before_days),
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
            CertPaths(self.settings.certs_dir),
            passphrase,
            self.renewal_names(),
            key_type=self.settings.cert_key_type,
            validity_days=self.settings.cert_validity_days,
        )
        self.load()
        self.renewals += 1
        log.info(
            "renewed: new certificate valid until %s",
            self.pair.leaf.not_valid_after_utc.isoformat(),
        )
        return "renewed"

    def _uses_own_ca(self) -> bool:
        """Renewal only makes sense for files fognode itself manages."""
        paths = CertPaths(self.settings.certs_dir)
        return (
            self.cert_file == paths.server_cert
            and self.key_file == paths.server_key
            and paths.ca_key.exists()
        )

    async def watch(self) -> None:
        """Check the certificate periodically until cancelled."""
        interval = self.settings.cert_check_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.check_once)
            except CertError as exc:
                log.error("certificate renewal failed: %s", exc)
            except Exception:
                log.exception("certificate check failed")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(
            f"{what} not found at {path}; create one with `fognode certs init` and "
            "`fognode certs issue` (./setup.sh does both), or run without TLS (--no-tls)"
        ) from None
    except OSError as exc:
        raise CertError(f"cannot read {what} at {path}: {exc.strerror}") from None


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
