"""Read certificates back: what they say, and whether a pair can be served."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import verification

from .authority import now
from .errors import CertError
from .issuer import cert_names
from .keys import PrivateKey, same_public_key


def fingerprint(cert: x509.Certificate, *, colons: bool = True) -> str:
    digest = cert.fingerprint(hashes.SHA256()).hex().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)) if colons else digest


def file_fingerprint(path: Path) -> str:
    """The SHA-256 fingerprint (hex, no colons) of the first certificate in a PEM file."""
    return fingerprint(x509.load_pem_x509_certificate(path.read_bytes()), colons=False)


def describe(cert: x509.Certificate) -> dict[str, Any]:
    names = cert_names(cert)
    remaining = cert.not_valid_after_utc - now()
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "dns_names": list(names.dns),
        "ip_addresses": [str(ip) for ip in names.ips],
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "days_left": round(remaining.total_seconds() / 86400, 1),
        "is_ca": _is_ca(cert),
        "name_constraints": _constraints(cert),
        "key": _key_description(cert),
        "sha256_fingerprint": fingerprint(cert),
    }


def _constraints(cert: x509.Certificate) -> list[str]:
    """The names a CA may vouch for ([] when it may vouch for anything)."""
    try:
        value = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in value.permitted_subtrees or ()]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _key_description(cert: x509.Certificate) -> str:
    public = cert.public_key()
    curve = getattr(public, "curve", None)
    if curve is not None:
        return f"ECDSA {curve.name}"
    size = getattr(public, "key_size", None)
    return f"RSA {size}" if size else type(public).__name__


def check_server_pair(
    chain: list[x509.Certificate],
    key: PrivateKey,
    ca: x509.Certificate,
    *,
    at: dt.datetime | None = None,
) -> None:
    """Refuse to serve a pair that no client would accept, and say why."""
    if not chain:
        raise CertError("the server certificate file holds no certificate")
    leaf = chain[0]
    when = at or now()
    if not same_public_key(key, leaf):
        raise CertError("the server key does not match the server certificate")
    if leaf.not_valid_after_utc <= when:
        raise CertError(
            f"the server certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "issue a new one with `fognode certs issue`"
        )
    if leaf.not_valid_before_utc > when:
        raise CertError(
            f"the server certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M}"
            " UTC (is this machine's clock right?)"
        )
    names = cert_names(leaf)
    if not names.dns:
        raise CertError("the server certificate has no DNS subjectAltName; clients will refuse it")
    store = verification.Store([ca])
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(when)
        .build_server_verifier(x509.DNSName(names.dns[0]))
    )
    try:
        verifier.verify(leaf, chain[1:])
    except verification.VerificationError as exc:
        raise CertError(
            f"the server certificate does not chain to the CA {ca.subject.rfc4514_string()} ({exc})"
        ) from None
