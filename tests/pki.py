"""Test PKIs made with fognode's own certs/ code: a fog's CA and a rogue one.

The layout is the real one (certs/store.py): the root in ``<dir>-ca``, this
node's issuing CA in ``<dir>-issuer``, and in ``<dir>`` what the server
reads (ca.crt, server.crt with the issuing CA after the leaf, server.key,
the node's peer certificate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
