"""The CA's and the server certificate's life: create, issue, decide to renew.

These functions do file I/O and (for RSA) slow key generation; the gateway
calls them off the event loop.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .authority import Authority, build_ca, load_ca, now, save_ca
from .inspect import check_server_pair
from .issuer import DEFAULT_VALIDITY_DAYS, SubjectNames, issue_server_cert
from .keys import KeyType, key_from_pem, key_to_pem
from .passphrase import check_strength
from .store import PRIVATE, PUBLIC, CertPaths, load_certs, read_bytes, write_atomic


def init_ca(
    paths: CertPaths,
    passphrase: bytes,
    *,
    common_name: str,
    key_type: KeyType = "ecdsa-p256",
    force: bool = False,
) -> Authority:
    check_strength(passphrase)
    authority = build_ca(common_name, key_type=key_type)
    save_ca(paths, authority, passphrase, force=force)
    return authority


def issue_to_files(
    paths: CertPaths,
    passphrase: bytes | None,
    names: SubjectNames,
    *,
    key_type: KeyType = "ecdsa-p256",
    validity_days: float = DEFAULT_VALIDITY_DAYS,
) -> x509.Certificate:
    """Issue a server certificate and write its key and certificate."""
    authority = load_ca(paths, passphrase, need_key=True)
    cert, key = issue_server_cert(authority, names, key_type=key_type, validity_days=validity_days)
    # Key first, then the certificate: a reader that sees the new certificate
    # finds the new key already in place. A reader between the two writes
    # sees a mismatched pair, which load_server_pair() refuses, so it keeps
    # the old one. The root is not appended: clients have it, and it would
    # only add bytes to every handshake.
    write_atomic(paths.server_key, key_to_pem(key), PRIVATE)
    write_atomic(paths.server_cert, cert.public_bytes(Encoding.PEM), PUBLIC)
    return cert


@dataclass(frozen=True)
class ServerPair:
    chain: list[x509.Certificate]
    ca: x509.Certificate

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def load_server_pair(cert_file: Path, key_file: Path, ca_file: Path) -> ServerPair:
    """Load and check the pair the server would present; raise CertError if unusable."""
    chain = load_certs(cert_file, "server certificate")
    ca = load_certs(ca_file, "CA certificate")[0]
    key = key_from_pem(read_bytes(key_file, "server key"))
    check_server_pair(chain, key, ca)
    return ServerPair(chain, ca)


def renewal_reason(
    leaf: x509.Certificate,
    *,
    renew_before: dt.timedelta,
    wanted: SubjectNames | None = None,
    at: dt.datetime | None = None,
) -> str | None:
    """Why the certificate should be replaced now, or None if it is fine."""
    when = at or now()
    left = leaf.not_valid_after_utc - when
    if left <= renew_before:
        return f"it expires in {left.total_seconds() / 86400:.1f} days"
    if wanted is not None and not wanted.covered_by(leaf):
        return "the configured names or addresses changed"
    return None
