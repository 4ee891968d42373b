"""TLS termination: the listening context, and swapping in a new certificate.

The listening socket keeps one SSL context for its whole life, so a new
certificate cannot simply replace it. Instead the listening context has a
server-name callback that OpenSSL runs for every ClientHello (with or
without SNI) and that switches the connection to the *current* context.
:meth:`TlsTerminator.load` builds a complete new context from checked files
and swaps it in: new connections get the new certificate, open streams keep
theirs, and a half-written or mismatched pair never reaches a client. When
to load and when to renew is cert_renewal.py's business.
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from ...certs.errors import CertError
from ...certs.lifecycle import ServerPair, load_server_pair
from .openssl import TICKET_KEY_BYTES, set_groups, set_ticket_keys

log = logging.getLogger("fognode.tls")

# TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites are
# fixed by OpenSSL and all modern. TLS 1.2 stays: Android 7-9 phones and
# older Apple devices that apps still support speak it, and with these
# suites and groups it is as strong as 1.3 apart from the handshake's speed.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# Key exchange: Mozilla's "intermediate" groups. No finite-field groups
# (ffdhe8192 costs the server ~100x the CPU of X25519 per handshake), no
# X448 or P-521 (same attack, smaller factor; no client needs them).
TLS_GROUPS = "X25519:P-256:P-384"
# Session tickets are encrypted with a key that changes this often; every
# process derives the same key for the same period, so any worker resumes a
# session another one started, and a stolen key opens at most one period.
TICKET_PERIOD = 12 * 3600.0


def _base_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.set_alpn_protocols(["http/1.1"])
    set_groups(ctx, TLS_GROUPS)
    return ctx


class TicketKeys:
    """The node's session ticket keys: derived from one secret the main
    process makes at start (`tls_ticket_secret`, handed to every worker),
    one key per `TICKET_PERIOD`. Tickets from an earlier period are not
    accepted (the client then does a full handshake)."""

    def __init__(self, secret: bytes | None = None, period: float = TICKET_PERIOD) -> None:
        self.secret = secret or secrets.token_bytes(32)
        self.period = period

    def index(self, at: float | None = None) -> int:
        return int((time.time() if at is None else at) // self.period)

    def key(self, index: int) -> bytes:
        info = b"fognode tls tickets " + index.to_bytes(8, "big")
        return HKDFExpand(hashes.SHA256(), TICKET_KEY_BYTES, info).derive(self.secret)


@dataclass(frozen=True)
class _FileStamp:
    cert: tuple[int, int, int]
    key: tuple[int, int, int]

    @classmethod
    def of(cls, cert: Path, key: Path) -> _FileStamp | None:
        try:
            c, k = cert.stat(), key.stat()
        except OSError:  # missing or unreadable: reading them says which (_read)
            return None
        return cls((c.st_ino, c.st_mtime_ns, c.st_size), (k.st_ino, k.st_mtime_ns, k.st_size))


class TlsTerminator:
    """Owns the listening SSL context and the certificate it serves."""

    def __init__(
        self, cert_file: Path, key_file: Path, ca_file: Path, tickets: TicketKeys | None = None
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.ca_file = ca_file
        self.tickets = tickets or TicketKeys()
        self.listening = _base_context()
        self.current: ssl.SSLContext | None = None
        self.pair: ServerPair | None = None
        self._stamp: _FileStamp | None = None
        self._ticket_index: int | None = None

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
        self._ticket_index = None
        self._rotate_tickets()
        return pair

    def _rotate_tickets(self) -> None:
        """The period's ticket key on the listening context (OpenSSL takes the
        keys from the context a connection started on) and the current one."""
        index = self.tickets.index()
        if index == self._ticket_index:
            return
        key = self.tickets.key(index)
        for ctx in (self.listening, self.current):
            if ctx is not None:
                set_ticket_keys(ctx, key)
        self._ticket_index = index

    def _pick_context(
        self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # Any name, or none at all (clients that connect by IP send no SNI),
        # gets the one server certificate.
        if self.current is not None:
            self._rotate_tickets()
            sock.context = self.current
        return None

    def changed_on_disk(self) -> bool:
        """The files are not the ones loaded last (replaced, renewed, or touched)."""
        stamp = _FileStamp.of(self.cert_file, self.key_file)
        return stamp is not None and stamp != self._stamp


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(
            f"{what} not found at {path}; create one with `fognode certs init` and "
            "`fognode certs issue --node NAME --install` (./setup.sh does both), or run "
            "without TLS (--no-tls)"
        ) from None
    except OSError as exc:
        raise CertError(
            f"cannot read {what} at {path}: {exc.strerror} (fognode runs as "
            f"{getpass.getuser()}; the files and their directories must be readable by it)"
        ) from None


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
