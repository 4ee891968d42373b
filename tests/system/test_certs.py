"""`fognode certs` as an operator runs it: the installed command, in a process of its own."""

from __future__ import annotations

import json
import os
import plistlib
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fognode.certs.inspect import fingerprint
from fognode.certs.store import load_certs

FOGNODE = [sys.executable, "-m", "fognode.gateway.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FOGNODE, "certs", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_cli_init_issue_show_export(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    secret = {"FOGNODE_CA_PASSPHRASE": "a long test passphrase"}

    no_secret = run_cli("init", "--dir", str(certs), env={"FOGNODE_CA_PASSPHRASE": ""})
    assert no_secret.returncode == 1 and "no passphrase" in no_secret.stderr

    init = run_cli("init", "--dir", str(certs), env=secret)
    assert init.returncode == 0, init.stderr
    again = run_cli("init", "--dir", str(certs), env=secret)
    assert again.returncode == 1 and "--force" in again.stderr

    wrong = run_cli("issue", "--dir", str(certs), "x.local", env={"FOGNODE_CA_PASSPHRASE": "no"})
    assert wrong.returncode == 1 and "passphrase" in wrong.stderr

    passfile = tmp_path / "pass.txt"
    passfile.write_text("a long test passphrase\n")
    issue = run_cli(
        "issue",
        "--dir",
        str(certs),
        "--passphrase-file",
        str(passfile),
        "spezillmfog.local",
        "node.local",
        "10.1.2.3",
        "--days",
        "90",
    )
    assert issue.returncode == 0, issue.stderr

    show = run_cli("show", "--dir", str(certs), "--json")
    assert show.returncode == 0, show.stderr
    info = json.loads(show.stdout)
    assert info["server"]["dns_names"] == ["spezillmfog.local", "node.local"]
    assert info["server"]["ip_addresses"] == ["10.1.2.3"]
    assert 89 < info["server"]["days_left"] <= 90
    assert info["ca"]["is_ca"] is True
    human = run_cli("show", "--dir", str(certs))
    assert "sha256 fingerprint" in human.stdout and "spezillmfog.local" in human.stdout

    out = tmp_path / "export"
    export = run_cli("export", "--dir", str(certs), "--out", str(out))
    assert export.returncode == 0, export.stderr
    ca = load_certs(certs / "ca.crt", "ca")[0]
    assert fingerprint(ca) in export.stdout
    assert "Certificate Trust Settings" in export.stdout
    assert x509.load_pem_x509_certificate((out / "fognode-ca.crt").read_bytes()) == ca
    assert x509.load_der_x509_certificate((out / "fognode-ca.cer").read_bytes()) == ca
    profile = plistlib.loads((out / "fognode-ca.mobileconfig").read_bytes())
    payload = profile["PayloadContent"][0]
    assert payload["PayloadType"] == "com.apple.security.root"
    assert payload["PayloadContent"] == ca.public_bytes(serialization.Encoding.DER)
    assert profile["PayloadType"] == "Configuration"
