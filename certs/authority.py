"""Create and load the root CA that phones are asked to trust."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from .errors import CertError
from .keys import (
    KeyType,
    PrivateKey,
    generate_key,
    key_from_pem,
    key_to_pem,
    same_public_key,
)
from .store import PRIVATE, PUBLIC, CertPaths, load_cert, read_bytes, write_atomic

CA_VALIDITY_DAYS = 3650


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: PrivateKey | None  # None when only the certificate is available


def signature_hash(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def build_ca(
    common_name: str,
    *,
    key_type: KeyType = "ecdsa-p256",
    validity_days: int = CA_VALIDITY_DAYS,
) -> Authority:
    key = generate_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fognode"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    start = now() - dt.timedelta(minutes=5)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=validity_days))
        # pathlen 0: this CA signs server certificates only, never other CAs.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, signature_hash(key))
    )
    return Authority(cert, key)


def save_ca(paths: CertPaths, authority: Authority, passphrase: bytes, *, force: bool) -> None:
    if not passphrase:
        raise CertError("the CA key must be protected by a passphrase")
    if authority.key is None:
        raise CertError("no CA key to save")
    if not force and (paths.ca_cert.exists() or paths.ca_key.exists()):
        raise CertError(
            f"a CA already exists in {paths.directory}; phones that trust it would stop "
            "trusting this node. Use --force to replace it anyway."
        )
    write_atomic(paths.ca_key, key_to_pem(authority.key, passphrase), PRIVATE)
    write_atomic(paths.ca_cert, authority.cert.public_bytes(Encoding.PEM), PUBLIC)


def load_ca(paths: CertPaths, passphrase: bytes | None, *, need_key: bool) -> Authority:
    cert = load_cert(paths.ca_cert, "CA certificate")
    if not need_key:
        return Authority(cert, None)
    if passphrase is None:
        raise CertError(
            "the CA key is encrypted: set FOGNODE_CA_PASSPHRASE or "
            "FOGNODE_CA_PASSPHRASE_FILE (or run in a terminal to be asked)"
        )
    key = key_from_pem(read_bytes(paths.ca_key, "CA key"), passphrase)
    if not same_public_key(key, cert):
        raise CertError(f"the CA key {paths.ca_key} does not belong to {paths.ca_cert}")
    return Authority(cert, key)
