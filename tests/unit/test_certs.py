"""The local CA and server certificates: shape, file safety, checks, CLI."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from fognode.certs.authority import load_ca
from fognode.certs.errors import CertError
from fognode.certs.inspect import check_server_pair
from fognode.certs.issuer import SubjectNames, issue_server_cert
from fognode.certs.keys import key_from_pem
from fognode.certs.lifecycle import init_ca, load_server_pair, renewal_reason
from fognode.certs.store import CertPaths, load_certs
from tests.support.pki import PASSPHRASE, make_pki


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_is_a_ca_with_an_encrypted_key_and_safe_modes(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    ca = load_certs(pki.paths.ca_cert, "ca")[0]
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is True
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert ca.not_valid_after_utc - ca.not_valid_before_utc > dt.timedelta(days=3000)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert mode(pki.paths.ca_key) == 0o600
    assert mode(pki.paths.server_key) == 0o600
    assert mode(pki.paths.ca_cert) == 0o644
    assert b"ENCRYPTED PRIVATE KEY" in pki.paths.ca_key.read_bytes()
    with pytest.raises(CertError, match="encrypted"):
        key_from_pem(pki.paths.ca_key.read_bytes())
    with pytest.raises(CertError, match="wrong passphrase"):
        key_from_pem(pki.paths.ca_key.read_bytes(), b"not the passphrase")
    assert load_ca(pki.paths, PASSPHRASE, need_key=True).key is not None


def test_ca_is_never_overwritten_without_force(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    before = pki.paths.ca_cert.read_bytes()
    with pytest.raises(CertError, match="--force"):
        init_ca(pki.paths, PASSPHRASE, common_name="again")
    assert pki.paths.ca_cert.read_bytes() == before
    init_ca(pki.paths, PASSPHRASE, common_name="again", force=True)
    assert pki.paths.ca_cert.read_bytes() != before


def test_short_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="too short"):
        init_ca(CertPaths(tmp_path), b"hunter2", common_name="x")
    assert not (tmp_path / "ca.key").exists()


def test_server_certificate_meets_apples_rules(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, names=("spezillmfog.local", "node1.local", "192.168.1.20", "::1"))
    chain = load_certs(pki.paths.server_cert, "server")
    leaf, ca = chain[0], load_certs(pki.paths.ca_cert, "ca")[0]
    assert len(chain) == 1  # the root is not sent in handshakes
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["spezillmfog.local", "node1.local"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.168.1.20"),
        ipaddress.ip_address("::1"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=398)
    assert leaf.signature_hash_algorithm is not None
    assert leaf.signature_hash_algorithm.name == "sha256"
    check_server_pair(chain, key_from_pem(pki.paths.server_key.read_bytes()), ca)


def test_validity_beyond_apples_limit_is_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    authority = load_ca(pki.paths, PASSPHRASE, need_key=True)
    with pytest.raises(CertError, match="825"):
        issue_server_cert(authority, SubjectNames.parse(["a.local"]), validity_days=900)


def test_rsa_keys_for_old_clients(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, key_type="rsa-2048")
    leaf = load_certs(pki.paths.server_cert, "server")[0]
    public = leaf.public_key()
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    assert leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment


def test_names_are_parsed_and_checked() -> None:
    names = SubjectNames.parse(["SpeziLLMFog.local.", "10.0.0.1", "spezillmfog.local", " "])
    assert names.dns == ("spezillmfog.local",)
    assert [str(ip) for ip in names.ips] == ["10.0.0.1"]
    with pytest.raises(CertError):
        SubjectNames.parse(["10.0.0.1"])  # no DNS name at all
    with pytest.raises(CertError):
        SubjectNames.parse(["bad name"])


def test_pair_checks_refuse_mismatch_expiry_and_foreign_ca(tmp_path: Path) -> None:
    node = make_pki(tmp_path / "node")
    other = make_pki(tmp_path / "other", common_name="someone else's CA")
    chain = load_certs(node.paths.server_cert, "s")
    node_ca = load_certs(node.paths.ca_cert, "ca")[0]
    other_ca = load_certs(other.paths.ca_cert, "ca")[0]
    node_key = key_from_pem(node.paths.server_key.read_bytes())
    other_key = key_from_pem(other.paths.server_key.read_bytes())

    with pytest.raises(CertError, match="does not match"):
        check_server_pair(chain, other_key, node_ca)
    with pytest.raises(CertError, match="does not chain"):
        check_server_pair(chain, node_key, other_ca)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    with pytest.raises(CertError, match="expired"):
        check_server_pair(chain, node_key, node_ca, at=later)
    # The same refusals through the file loader the server uses.
    with pytest.raises(CertError, match="does not chain"):
        load_server_pair(node.paths.server_cert, node.paths.server_key, other.paths.ca_cert)


def test_renewal_reason(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, validity_days=10)
    leaf = load_certs(pki.paths.server_cert, "s")[0]
    assert renewal_reason(leaf, renew_before=dt.timedelta(days=5)) is None
    assert "expires" in (renewal_reason(leaf, renew_before=dt.timedelta(days=11)) or "")
    moved = SubjectNames.parse(["spezillmfog.local", "192.168.7.7"])
    assert "changed" in (
        renewal_reason(leaf, renew_before=dt.timedelta(days=1), wanted=moved) or ""
    )
