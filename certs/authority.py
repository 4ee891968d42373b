"""Create and load the fog's root CA, and the issuing CA each node signs with.

Two levels, for two reasons (ARCHITECTURE.md, Trust). The root is what
phones trust and apps bundle; its key is used only to make a node's
credentials (`fognode certs issue --node`) and is kept away from every
node's serving process. Each node gets its own *issuing CA*: an
intermediate with the same name constraints, allowed to sign TLS server
certificates only (EKU serverAuth, path length 0), which the node's
privileged renewal signs its 90-day server certificates with, unattended.
Android applies name constraints only below the trust anchor, so they must
be in an intermediate to hold there.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .constraints import lan_constraints
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

# The root: what an app build bundles and phones install. Replacing it means
# a new app build, so it cannot be short; it has no revocation and its key
# lives on a LAN machine, not in an HSM, so it should not outlive a few app
# generations either. `fognode certs check` warns above CA_LONG_LIVED_DAYS.
CA_VALIDITY_DAYS = 1826  # five years
CA_LONG_LIVED_DAYS = 1830
# A node's credentials (its issuing CA and its fog peer certificate): renewed
# by whoever holds the root, so not too often; short enough that a stolen
# node's credentials lapse.
NODE_VALIDITY_DAYS = 730


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


def ca_usage() -> x509.KeyUsage:
    """What a CA key may do: sign certificates and CRLs (and, for OCSP, data)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def build_ca(
    common_name: str,
    *,
    key_type: KeyType = "ecdsa-p256",
    validity_days: int = CA_VALIDITY_DAYS,
    permit: tuple[str, ...] = (),
) -> Authority:
    """A root that may vouch for LAN names only (constraints.py), plus ``permit``."""
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
        # pathlen 1: the root signs nodes' issuing CAs, and they sign only leaves.
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(ca_usage(), critical=True)
        # Critical, as RFC 5280 requires: a client that cannot enforce the
        # constraints must refuse the certificate rather than ignore them.
        .add_extension(lan_constraints(permit), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, signature_hash(key))
    )
    return Authority(cert, key)


def build_issuer(
    root: Authority,
    node_name: str,
    *,
    key_type: KeyType = "ecdsa-p256",
    validity_days: float = NODE_VALIDITY_DAYS,
) -> Authority:
    """A node's issuing CA: the root's name constraints repeated (so verifiers
    that skip the anchor's still see them), TLS server certificates only."""
    if root.key is None:
        raise CertError("making a node's issuing CA needs the root CA key (and its passphrase)")
    basic = root.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if basic.path_length == 0:
        raise CertError(
            "this CA was made before fognode used issuing CAs (path length 0) and cannot sign "
            "one; see docs/certificates.md, 'Moving to a name-constrained CA'"
        )
    key = generate_key(key_type)
    public = key.public_key()
    start = now() - dt.timedelta(minutes=5)
    end = min(now() + dt.timedelta(days=validity_days), root.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fognode"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"fognode issuing CA ({node_name})"),
                ]
            )
        )
        .issuer_name(root.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(_authority_key_id(root.cert), critical=False)
    )
    try:
        constraints = root.cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        constraints = lan_constraints()
    builder = builder.add_extension(constraints, critical=True)
    return Authority(builder.sign(root.key, signature_hash(root.key)), key)


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


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


def save_issuer(paths: CertPaths, issuer: Authority, root: x509.Certificate) -> None:
    """The issuing CA's key unencrypted (0600): renewal runs unattended, and a
    passphrase stored beside it would protect nothing. Who may read the
    directory is what protects it (the renewal's user, never the server's)."""
    if issuer.key is None:
        raise CertError("no issuing CA key to save")
    paths.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(paths.issuer_key, key_to_pem(issuer.key), PRIVATE)
    write_atomic(paths.issuer_cert, issuer.cert.public_bytes(Encoding.PEM), PUBLIC)
    write_atomic(paths.ca_cert, root.public_bytes(Encoding.PEM), PUBLIC)


def load_issuer(paths: CertPaths) -> Authority:
    cert = load_cert(paths.issuer_cert, "issuing CA certificate")
    key = key_from_pem(read_bytes(paths.issuer_key, "issuing CA key"))
    if not same_public_key(key, cert):
        raise CertError(f"the key {paths.issuer_key} does not belong to {paths.issuer_cert}")
    return Authority(cert, key)
