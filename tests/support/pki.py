"""Test PKIs made with fognode's own certs/ code: a fog's CA and a rogue one.

The layout is the real one (certs/store.py): the root in ``<dir>-ca``, this
node's issuing CA in ``<dir>-issuer``, and in ``<dir>`` what the server
reads (ca.crt, server.crt with the issuing CA after the leaf, server.key,
the node's peer certificate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fognode.certs.bundle import install_bundle, make_bundle
from fognode.certs.issuer import SubjectNames
from fognode.certs.lifecycle import init_ca, issue_to_files, signing_authority
from fognode.certs.store import CertPaths

PASSPHRASE = b"correct horse battery staple"
NODE_NAMES = ("spezillmfog.local", "localhost", "127.0.0.1", "::1")


@dataclass
class Pki:
    paths: CertPaths  # what the server reads
    root: CertPaths  # the fog's CA
    issuer: CertPaths  # this node's issuing CA

    @property
    def ca(self) -> Path:
        return self.paths.ca_cert


def make_pki(
    directory: Path,
    *,
    names: tuple[str, ...] = NODE_NAMES,
    validity_days: float = 90,
    key_type: str = "ecdsa-p256",
    common_name: str = "fognode test CA",
    node: str = "node1",
) -> Pki:
    paths = CertPaths(directory)
    root = CertPaths(directory.with_name(directory.name + "-ca"))
    issuer = CertPaths(directory.with_name(directory.name + "-issuer"))
    authority = init_ca(root, PASSPHRASE, common_name=common_name, key_type=key_type)  # type: ignore[arg-type]
    bundle = make_bundle(authority, node, key_type=key_type, validity_days=365)  # type: ignore[arg-type]
    install_bundle(bundle, paths, issuer)
    issue_to_files(
        paths,
        signing_authority(issuer, paths, None),
        SubjectNames.parse(names),
        key_type=key_type,  # type: ignore[arg-type]
        validity_days=validity_days,
    )
    return Pki(paths, root, issuer)


def make_legacy_pki(directory: Path, *, names: tuple[str, ...] = NODE_NAMES) -> Pki:
    """The layout fognode made before name constraints: an unconstrained
    ten-year root (path length 0) whose key and passphrase sit beside the
    server's files, and a 397-day server certificate it signed itself."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from fognode.certs.authority import Authority, ca_usage, save_ca
    from fognode.certs.issuer import sign_leaf
    from fognode.certs.keys import generate_key, key_to_pem

    paths = CertPaths(directory)
    key = generate_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fognode CA (old)")])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    root = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    authority = Authority(root, key)
    save_ca(paths, authority, PASSPHRASE, force=False)
    (directory / "ca.passphrase").write_bytes(PASSPHRASE + b"\n")
    parsed = SubjectNames.parse(names)
    server_key = generate_key()
    leaf = sign_leaf(
        authority,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, parsed.dns[0])]),
        server_key,
        397,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        names=[x509.DNSName(n) for n in parsed.dns] + [x509.IPAddress(i) for i in parsed.ips],
    )
    paths.server_key.write_bytes(key_to_pem(server_key))
    paths.server_key.chmod(0o600)
    paths.server_cert.write_bytes(leaf.public_bytes(Encoding.PEM))
    none = CertPaths(directory.with_name(directory.name + "-none"))
    return Pki(paths, paths, none)


def node_certs_dir(pki: Pki, directory: Path, name: str, *, peer: str = "node") -> Path:
    """Another node's certificate directory in the same fog: the fog's CA, the
    server certificate phones see, and its own peer credentials, as
    `fognode certs issue --node NAME` and `certs install` leave them.
    ``peer``: "node" (its node certificate), "server" (only the server
    certificate, copied where the node certificate goes: a node that poses
    as a member with what every node has) or "none"."""
    import shutil

    from cryptography.hazmat.primitives.serialization import Encoding

    from fognode.certs.authority import load_ca
    from fognode.certs.keys import key_to_pem
    from fognode.certs.peers import issue_node_cert

    directory.mkdir(parents=True, exist_ok=True)
    for part in ("ca.crt", "server.crt", "server.key"):
        shutil.copy(pki.paths.directory / part, directory / part)
    target = CertPaths(directory)
    if peer == "node":
        cert, key = issue_node_cert(load_ca(pki.root, PASSPHRASE, need_key=True), name)
        target.node_cert.write_bytes(cert.public_bytes(Encoding.PEM))
        target.node_key.write_bytes(key_to_pem(key))
    elif peer == "server":
        shutil.copy(pki.paths.server_cert, target.node_cert)
        shutil.copy(pki.paths.server_key, target.node_key)
    if target.node_key.exists():
        target.node_key.chmod(0o600)
    return directory


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """The node's CA and its server certificate for the usual names, in the test's directory."""
    return make_pki(tmp_path / "node")
