"""The certificates as other programs see them: `fognode certs` as an operator runs
it (the installed command, a process of its own), and `openssl verify`
refusing what the name constraints forbid."""

from __future__ import annotations

import datetime as dt
import json
import os
import plistlib
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from fognode.certs.authority import (
    Authority,
    load_ca,
    load_issuer,
)
from fognode.certs.inspect import fingerprint
from fognode.certs.store import CertPaths, load_certs
from tests.support.pki import PASSPHRASE, make_pki

FOGNODE = [sys.executable, "-m", "fognode.gateway.cli"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _forge(signer: Authority, name: str) -> x509.Certificate:
    """What someone holding a signing key could make: a certificate for any
    name, built by hand (fognode's own issuer refuses such names)."""
    assert signer.key is not None
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)]))
        .issuer_name(signer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(signer.key, hashes.SHA256())
    )


def _openssl_verify(ca: Path, leaf: x509.Certificate, chain: list[x509.Certificate]) -> str:
    workdir = ca.parent
    (workdir / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (workdir / "chain.pem").write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain) or b""
    )
    argv = ["openssl", "verify", "-purpose", "sslserver", "-CAfile", str(ca)]
    if chain:
        argv += ["-untrusted", str(workdir / "chain.pem")]
    out = subprocess.run([*argv, str(workdir / "leaf.pem")], capture_output=True, text=True)
    return (out.stdout + out.stderr).strip() + f" (exit {out.returncode})"


@pytest.mark.parametrize("signer", ["issuing CA", "root"])
def test_a_certificate_for_example_com_fails_name_constraint_verification(
    tmp_path: Path, signer: str
) -> None:
    """Whoever holds the node's issuing key, or the root's, cannot make a
    certificate for a website that clients would accept: OpenSSL and
    cryptography's verifier both refuse it, while the node's own passes."""
    pki = make_pki(tmp_path / "c")
    root = load_ca(pki.root, PASSPHRASE, need_key=True)
    issuing = load_issuer(pki.issuer)
    by = issuing if signer == "issuing CA" else root
    chain = [issuing.cert] if by is issuing else []
    forged = _forge(by, "example.com")
    ca_file = tmp_path / "root.pem"
    ca_file.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))

    said = _openssl_verify(ca_file, forged, chain)
    assert "permitted subtree violation" in said and "(exit 2)" in said, said
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([root.cert]))
        .build_server_verifier(x509.DNSName("example.com"))
    )
    with pytest.raises(verification.VerificationError, match="name constraint"):
        verifier.verify(forged, chain)

    # The control: the node's own certificate passes both.
    served = load_certs(pki.paths.server_cert, "server")
    said = _openssl_verify(ca_file, served[0], served[1:])
    assert said.endswith("OK (exit 0)"), said
    verification.PolicyBuilder().store(verification.Store([root.cert])).build_server_verifier(
        x509.DNSName("spezillmfog.local")
    ).verify(served[0], served[1:])


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FOGNODE, "certs", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_cli_init_node_bundle_install_renew_check_show_export(tmp_path: Path) -> None:
    here = {
        "FOGNODE_CERTS_DIR": str(tmp_path / "certs"),
        "FOGNODE_CA_DIR": str(tmp_path / "ca"),
        "FOGNODE_ISSUER_DIR": str(tmp_path / "issuer"),
        "FOGNODE_CERT_NAMES": "spezillmfog.local,node.local,10.1.2.3",
    }
    no_secret = run_cli("init", env={**here, "FOGNODE_CA_PASSPHRASE": ""})
    assert no_secret.returncode == 1 and "no passphrase" in no_secret.stderr
    secret = {**here, "FOGNODE_CA_PASSPHRASE": "a long test passphrase"}
    init = run_cli("init", env=secret)
    assert init.returncode == 0, init.stderr
    assert "local" in init.stdout and "192.168.0.0/16" in init.stdout
    again = run_cli("init", env=secret)
    assert again.returncode == 1 and "--force" in again.stderr

    wrong = run_cli(
        "issue", "--node", "n1", "--install", env={**here, "FOGNODE_CA_PASSPHRASE": "no"}
    )
    assert wrong.returncode == 1 and "passphrase" in wrong.stderr
    mine = run_cli("issue", "--node", "n1", "--install", env=secret)
    assert mine.returncode == 0, mine.stderr
    assert "Issued the server certificate" in mine.stdout
    assert not (tmp_path / "certs" / "ca.key").exists()

    fresh = run_cli("renew", env=here)
    assert fresh.returncode == 0 and "nothing to renew" in fresh.stdout, fresh.stderr
    forced = run_cli("renew", "--force", env=here)
    assert forced.returncode == 0 and "Renewed" in forced.stdout, forced.stderr
    too_long = run_cli("issue", "--days", "91", env=here)
    assert too_long.returncode == 1 and "90 days at most" in too_long.stderr

    check = run_cli("check", "--json", env=here)
    assert check.returncode == 0, check.stdout + check.stderr
    assert {f["level"] for f in json.loads(check.stdout)} == {"ok"}

    show = run_cli("show", "--json", env=here)
    assert show.returncode == 0, show.stderr
    info = json.loads(show.stdout)
    assert info["server"]["dns_names"] == ["spezillmfog.local", "node.local"]
    assert info["server"]["ip_addresses"] == ["10.1.2.3"]
    assert 89 < info["server"]["days_left"] <= 90
    assert info["ca"]["is_ca"] is True and "local" in info["ca"]["name_constraints"]
    assert info["node"]["dns_names"] == ["n1.local"]
    assert info["issuer"]["is_ca"] is True
    human = run_cli("show", env=here)
    assert "sha256 fingerprint" in human.stdout and "spezillmfog.local" in human.stdout

    # A second node: the bundle travels as one file and installs there.
    bundle = tmp_path / "n2.bundle"
    made = run_cli("issue", "--node", "n2", "--out", str(bundle), env=secret)
    assert made.returncode == 0, made.stderr
    assert "fognode certs install" in made.stdout and mode(bundle) == 0o600
    there = {
        "FOGNODE_CERTS_DIR": str(tmp_path / "n2" / "certs"),
        "FOGNODE_ISSUER_DIR": str(tmp_path / "n2" / "issuer"),
        "FOGNODE_CA_DIR": str(tmp_path / "n2" / "ca"),
        "FOGNODE_CA_PASSPHRASE": "",
    }
    installed = run_cli("install", str(bundle), env=there)
    assert installed.returncode == 0, installed.stderr
    assert not (tmp_path / "n2" / "ca").exists()  # the root stays where it was
    n2 = CertPaths(tmp_path / "n2" / "certs")
    assert load_certs(n2.ca_cert, "ca") == load_certs(tmp_path / "ca" / "ca.crt", "ca")
    assert run_cli("check", env=there).returncode == 0

    out = tmp_path / "export"
    export = run_cli("export", "--out", str(out), env=here)
    assert export.returncode == 0, export.stderr
    ca = load_certs(tmp_path / "certs" / "ca.crt", "ca")[0]
    assert fingerprint(ca) in export.stdout
    assert "Certificate Trust Settings" in export.stdout
    assert x509.load_pem_x509_certificate((out / "fognode-ca.crt").read_bytes()) == ca
    assert x509.load_der_x509_certificate((out / "fognode-ca.cer").read_bytes()) == ca
    profile = plistlib.loads((out / "fognode-ca.mobileconfig").read_bytes())
    payload = profile["PayloadContent"][0]
    assert payload["PayloadType"] == "com.apple.security.root"
    assert payload["PayloadContent"] == ca.public_bytes(serialization.Encoding.DER)
    assert profile["PayloadType"] == "Configuration"
