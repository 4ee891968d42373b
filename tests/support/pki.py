"""Test PKIs made with fognode's own certs/ code: a node CA and a rogue one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fognode.certs.issuer import SubjectNames
from fognode.certs.lifecycle import init_ca, issue_to_files
from fognode.certs.store import CertPaths

PASSPHRASE = b"correct horse battery staple"
NODE_NAMES = ("spezillmfog.local", "localhost", "127.0.0.1", "::1")


@dataclass
class Pki:
    paths: CertPaths

    @property
    def ca(self) -> Path:
        return self.paths.ca_cert


def make_pki(
    directory: Path,
    *,
    names: tuple[str, ...] = NODE_NAMES,
    validity_days: float = 397,
    key_type: str = "ecdsa-p256",
    common_name: str = "fognode test CA",
) -> Pki:
    paths = CertPaths(directory)
    init_ca(paths, PASSPHRASE, common_name=common_name, key_type=key_type)  # type: ignore[arg-type]
    issue_to_files(
        paths,
        PASSPHRASE,
        SubjectNames.parse(names),
        key_type=key_type,  # type: ignore[arg-type]
        validity_days=validity_days,
    )
    return Pki(paths)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """The node's CA and its server certificate for the usual names, in the test's directory."""
    return make_pki(tmp_path / "node")
