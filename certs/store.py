"""Certificate directories: fixed file names, atomic writes, safe modes.

Three directories, each readable by whom it must be (docs/certificates.md):

    ca/       the fog's root, kept apart from every serving process
      ca.crt       the root CA certificate (public; what phones install)
      ca.key       its private key, encrypted with the passphrase (0600)
    issuer/   this node's issuing CA, read only by the renewal
      issuer.crt   the intermediate, signed by the root
      issuer.key   its key, unencrypted so renewal runs unattended (0600)
      ca.crt       the root
    certs/    what the serving process reads
      ca.crt       the root
      server.crt   the server certificate, then the issuing CA's
      server.key   the server key, unencrypted so the server starts unattended
      node.crt     this node's fog peer certificate (certs/peers.py)
      node.key     its key

Before issuing CAs existed, ca.key sat in certs/ beside server.key and the
root signed server certificates itself; that layout still works
(lifecycle.signing_authority) and `fognode certs check` says how to leave it.

Writes go to a temporary file in the same directory, are fsynced, then
renamed over the target: a crash or a concurrent reader never sees half a
key, and a running server reloading the pair sees either the old or the new.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from .errors import CertError

PRIVATE = 0o600
PUBLIC = 0o644


@dataclass(frozen=True)
class CertPaths:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def issuer_cert(self) -> Path:
        return self.directory / "issuer.crt"

    @property
    def issuer_key(self) -> Path:
        return self.directory / "issuer.key"

    @property
    def node_cert(self) -> Path:
        return self.directory / "node.crt"

    @property
    def node_key(self) -> Path:
        return self.directory / "node.key"


def write_atomic(path: Path, data: bytes, mode: int, *, group: int | None = None) -> None:
    """``group``: hand the file to this group (with a mode like 0640) so that
    another user, the server's, may read what this one writes."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # before any byte is written
        if group is not None and group != os.getegid():
            os.fchown(fd, -1, group)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(f"{what} not found at {path}") from None
    except OSError as exc:
        raise CertError(f"cannot read {what} at {path}: {exc.strerror}") from None


def load_certs(path: Path, what: str) -> list[x509.Certificate]:
    data = read_bytes(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertError(f"{what} at {path} is not a PEM certificate") from None
    return certs


def load_cert(path: Path, what: str) -> x509.Certificate:
    return load_certs(path, what)[0]
