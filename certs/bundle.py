"""A node bundle: everything a new node needs from the fog's CA, in one file.

`fognode certs issue --node NAME` (on the machine that holds the root)
writes it; `fognode certs install FILE` (on the new node) puts each part
where it belongs:

    node certificate + key   -> certs/node.crt, node.key   (the fog, issue 23)
    issuing CA + key         -> issuer/issuer.crt, issuer.key   (renewal only)
    root certificate         -> both, as ca.crt

One PEM text file with a readable header. It holds two private keys
unencrypted (the node uses both unattended), so it is written 0600 and is
meant to be copied over a trusted channel (scp, a USB stick) and deleted
after installing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from .authority import Authority, build_issuer, now, save_issuer
from .errors import CertError
from .inspect import fingerprint
from .keys import KeyType, PrivateKey, key_from_pem, key_to_pem, same_public_key
from .peers import FOG_PEER, issue_node_cert, node_dns_name, verify_peer_chain
from .store import PRIVATE, PUBLIC, CertPaths, read_bytes, write_atomic

_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\n?", re.S)


@dataclass(frozen=True)
class NodeBundle:
    name: str
    node: Authority  # the node certificate and its key
    issuer: Authority  # the node's issuing CA and its key
    ca: x509.Certificate  # the fog's root


def make_bundle(
    root: Authority, node_name: str, *, key_type: KeyType = "ecdsa-p256", validity_days: float
) -> NodeBundle:
    name = node_dns_name(node_name)
    cert, key = issue_node_cert(root, name, key_type=key_type, validity_days=validity_days)
    issuer = build_issuer(root, name, key_type=key_type, validity_days=validity_days)
    return NodeBundle(name, Authority(cert, key), issuer, root.cert)


def bundle_bytes(bundle: NodeBundle) -> bytes:
    assert bundle.node.key is not None and bundle.issuer.key is not None
    header = (
        f"# fognode node bundle for {bundle.name}, made {now():%Y-%m-%d %H:%M} UTC\n"
        f"# fog CA: {fingerprint(bundle.ca)}\n"
        f"# valid until {bundle.node.cert.not_valid_after_utc:%Y-%m-%d}\n"
        "# It holds two private keys: copy it to the new node over a trusted channel,\n"
        "# run `fognode certs install THIS-FILE` there (or `sudo fognode service install\n"
        "# --bundle THIS-FILE`), then delete it.\n"
    )
    parts = [
        ("node certificate", bundle.node.cert.public_bytes(Encoding.PEM)),
        ("node key", key_to_pem(bundle.node.key)),
        ("issuing CA certificate", bundle.issuer.cert.public_bytes(Encoding.PEM)),
        ("issuing CA key", key_to_pem(bundle.issuer.key)),
        ("fog CA certificate", bundle.ca.public_bytes(Encoding.PEM)),
    ]
    return header.encode() + b"".join(f"\n# {label}\n".encode() + pem for label, pem in parts)


def write_bundle(bundle: NodeBundle, path: Path) -> None:
    write_atomic(path, bundle_bytes(bundle), PRIVATE)


def read_bundle(path: Path) -> NodeBundle:
    """Parse and check a bundle: every part present, keys matching, the node
    certificate a member's of this root, the issuing CA signed by it."""
    data = read_bytes(path, "node bundle")
    certs: list[x509.Certificate] = []
    keys: list[PrivateKey] = []
    for match in _BLOCK.finditer(data):
        kind = match.group(1)
        if kind == b"CERTIFICATE":
            certs.append(x509.load_pem_x509_certificate(match.group(0)))
        elif kind.endswith(b"PRIVATE KEY"):
            keys.append(key_from_pem(match.group(0)))
    roots = [c for c in certs if c.issuer == c.subject]
    if len(roots) != 1:
        raise CertError(f"{path} is not a fognode node bundle (no single fog CA certificate)")
    ca = roots[0]
    node = next((c for c in certs if _has_usage(c, FOG_PEER)), None)
    issuer = next((c for c in certs if c is not ca and _is_ca(c)), None)
    if node is None or issuer is None:
        raise CertError(f"{path} lacks the node certificate or the issuing CA")

    def key_for(cert: x509.Certificate, what: str) -> PrivateKey:
        for key in keys:
            if same_public_key(key, cert):
                return key
        raise CertError(f"{path} has no key for its {what}")

    identity = verify_peer_chain(ca, [node])
    try:
        issuer.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertError(f"{path}: the issuing CA is not signed by the fog's CA") from None
    return NodeBundle(
        identity.name,
        Authority(node, key_for(node, "node certificate")),
        Authority(issuer, key_for(issuer, "issuing CA")),
        ca,
    )


def install_bundle(bundle: NodeBundle, certs: CertPaths, issuer: CertPaths) -> None:
    """Put the parts in place: the issuing CA where only the renewal reads,
    the node's peer credentials where the server reads."""
    assert bundle.node.key is not None
    save_issuer(issuer, bundle.issuer, bundle.ca)
    write_atomic(certs.node_key, key_to_pem(bundle.node.key), PRIVATE)
    write_atomic(certs.node_cert, bundle.node.cert.public_bytes(Encoding.PEM), PUBLIC)
    write_atomic(certs.ca_cert, bundle.ca.public_bytes(Encoding.PEM), PUBLIC)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _has_usage(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bool:
    try:
        return oid in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
