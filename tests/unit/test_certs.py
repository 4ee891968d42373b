"""The local CA and server certificates: shape, file safety, checks (the CLI and
openssl are in tests/system/test_certs.py)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from fognode.certs.authority import (
    Authority,
    build_ca,
    build_issuer,
    load_ca,
    load_issuer,
)
from fognode.certs.bundle import install_bundle, make_bundle, read_bundle, write_bundle
from fognode.certs.check import check_trust
from fognode.certs.errors import CertError
from fognode.certs.inspect import check_server_pair
from fognode.certs.issuer import SubjectNames, default_names, issue_server_cert
from fognode.certs.keys import key_from_pem
from fognode.certs.lifecycle import (
    RenewalPolicy,
    init_ca,
    load_server_pair,
    renew,
    renewal_reason,
    signing_authority,
)
from fognode.certs.peers import (
    FOG_PEER,
    PeerRefused,
    issue_node_cert,
    load_node_credentials,
    verify_peer_chain,
)
from fognode.certs.store import CertPaths, load_certs
from tests.support.pki import PASSPHRASE, make_legacy_pki, make_pki


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_is_name_constrained_five_years_with_an_encrypted_key(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "certs")
    ca = load_certs(pki.root.ca_cert, "ca")[0]
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is True
    assert constraints.value.path_length == 1  # root -> issuing CA -> server
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    names = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert names.critical
    permitted = names.value.permitted_subtrees or []
    assert x509.DNSName("local") in permitted and x509.DNSName("localhost") in permitted
    networks = {str(n.value) for n in permitted if isinstance(n, x509.IPAddress)}
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= networks
    assert {"127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128"} <= networks
    assert not any(isinstance(n, x509.DNSName) and "." in n.value for n in permitted)
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=1825) <= lifetime <= dt.timedelta(days=1827)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert mode(pki.root.ca_key) == 0o600
    assert mode(pki.paths.server_key) == 0o600
    assert mode(pki.issuer.issuer_key) == 0o600
    assert mode(pki.paths.ca_cert) == 0o644
    assert b"ENCRYPTED PRIVATE KEY" in pki.root.ca_key.read_bytes()
    with pytest.raises(CertError, match="encrypted"):
        key_from_pem(pki.root.ca_key.read_bytes())
    with pytest.raises(CertError, match="wrong passphrase"):
        key_from_pem(pki.root.ca_key.read_bytes(), b"not the passphrase")
    assert load_ca(pki.root, PASSPHRASE, need_key=True).key is not None
    # What the server reads holds no CA key at all.
    assert sorted(p.name for p in pki.paths.directory.iterdir()) == [
        "ca.crt",
        "node.crt",
        "node.key",
        "server.crt",
        "server.key",
    ]


def test_configured_names_outside_the_lan_are_permitted_from_the_start() -> None:
    root = build_ca("t", permit=("fognode.home.arpa", "100.64.0.0/10", "x.local"))
    permitted = root.cert.extensions.get_extension_for_class(x509.NameConstraints).value
    subtrees = permitted.permitted_subtrees or []
    assert x509.DNSName("fognode.home.arpa") in subtrees
    assert x509.IPAddress(ipaddress.ip_network("100.64.0.0/10")) in subtrees
    assert x509.DNSName("x.local") not in subtrees  # already inside .local
    issuer = build_issuer(root, "n")
    cert, _ = issue_server_cert(issuer, SubjectNames.parse(["fognode.home.arpa", "100.64.1.2"]))
    assert cert.subject.rfc4514_string() == "CN=fognode.home.arpa,O=fognode"


def test_ca_is_never_overwritten_without_force(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "certs")
    before = pki.root.ca_cert.read_bytes()
    with pytest.raises(CertError, match="--force"):
        init_ca(pki.root, PASSPHRASE, common_name="again")
    assert pki.root.ca_cert.read_bytes() == before
    init_ca(pki.root, PASSPHRASE, common_name="again", force=True)
    assert pki.root.ca_cert.read_bytes() != before


def test_short_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CertError, match="too short"):
        init_ca(CertPaths(tmp_path), b"hunter2", common_name="x")
    assert not (tmp_path / "ca.key").exists()


def test_server_certificate_meets_apples_rules(tmp_path: Path) -> None:
    pki = make_pki(
        tmp_path / "c", names=("spezillmfog.local", "node1.local", "192.168.1.20", "::1")
    )
    chain = load_certs(pki.paths.server_cert, "server")
    leaf, ca = chain[0], load_certs(pki.paths.ca_cert, "ca")[0]
    # The issuing CA follows the leaf; the root is not sent in handshakes.
    assert len(chain) == 2 and chain[1].subject == leaf.issuer and chain[1].issuer == ca.subject
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
    assert lifetime <= dt.timedelta(days=90, minutes=10)
    assert leaf.signature_hash_algorithm is not None
    assert leaf.signature_hash_algorithm.name == "sha256"
    check_server_pair(chain, key_from_pem(pki.paths.server_key.read_bytes()), ca)


def test_validity_beyond_90_days_and_names_beyond_the_lan_are_refused(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "c")
    authority = load_issuer(pki.issuer)
    with pytest.raises(CertError, match="90 days at most"):
        issue_server_cert(authority, SubjectNames.parse(["a.local"]), validity_days=91)
    with pytest.raises(CertError, match=r"may not vouch for example\.com, 8\.8\.8\.8"):
        issue_server_cert(authority, SubjectNames.parse(["a.local", "example.com", "8.8.8.8"]))
    # Default names keep only the LAN's addresses (a public IPv6 would be refused).
    names = default_names(["192.168.1.9", "2001:db8::7", "fe80::1", "100.64.0.1"])
    assert "192.168.1.9" in names and "fe80::1" in names
    assert "2001:db8::7" not in names and "100.64.0.1" not in names


def test_rsa_keys_for_old_clients(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "c", key_type="rsa-2048")
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
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=100)
    with pytest.raises(CertError, match="expired"):
        check_server_pair(chain, node_key, node_ca, at=later)
    # The same refusals through the file loader the server uses.
    with pytest.raises(CertError, match="does not chain"):
        load_server_pair(node.paths.server_cert, node.paths.server_key, other.paths.ca_cert)


def test_renewal_reason(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "c", validity_days=10)
    leaf = load_certs(pki.paths.server_cert, "s")[0]
    assert renewal_reason(leaf, renew_before=dt.timedelta(days=5)) is None
    assert "expires" in (renewal_reason(leaf, renew_before=dt.timedelta(days=11)) or "")
    moved = SubjectNames.parse(["spezillmfog.local", "192.168.7.7"])
    assert "changed" in (
        renewal_reason(leaf, renew_before=dt.timedelta(days=1), wanted=moved) or ""
    )


def test_the_issuing_ca_is_constrained_itself_for_verifiers_that_skip_the_roots() -> None:
    """Android applies name constraints only below the trust anchor: the
    intermediate repeats them, and may sign server certificates only."""
    root = build_ca("t")
    issuing = build_issuer(root, "kitchen.local")
    own = issuing.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert own.critical
    assert own.value == root.cert.extensions.get_extension_for_class(x509.NameConstraints).value
    basic = issuing.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
    eku = issuing.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_peer_certificates_admit_members_only(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "c", node="kitchen")
    root = load_ca(pki.root, PASSPHRASE, need_key=True)
    own = load_node_credentials(pki.paths)
    assert own is not None and own.name == "kitchen.local"
    eku = own.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH, FOG_PEER} <= set(eku)
    assert FOG_PEER.dotted_string.startswith("2.25.")
    member, _ = issue_node_cert(root, "attic")
    identity = verify_peer_chain(root.cert, [member])
    assert identity.name == "attic.local" and len(identity.fingerprint) == 64

    # A server certificate from the right CA (what every phone trusts) is no member.
    served = load_certs(pki.paths.server_cert, "server")
    with pytest.raises(PeerRefused):
        verify_peer_chain(root.cert, served)
    # Nor one the root signed itself as a plain server certificate.
    plain, _ = issue_server_cert(root, SubjectNames.parse(["attic.local"]))
    with pytest.raises(PeerRefused):
        verify_peer_chain(root.cert, [plain])
    # Nor a node certificate from another fog's CA.
    rogue, _ = issue_node_cert(build_ca("rogue"), "attic")
    with pytest.raises(PeerRefused, match="not signed by this fog's CA"):
        verify_peer_chain(root.cert, [rogue])
    # Nor one a node's issuing CA made, with its issuer sent along.
    issuing = load_issuer(pki.issuer)
    minted = issue_node_cert(Authority(issuing.cert, issuing.key), "attic")[0]
    with pytest.raises(PeerRefused):
        verify_peer_chain(root.cert, [minted, issuing.cert])
    # Nor an expired one.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=800)
    with pytest.raises(PeerRefused):
        verify_peer_chain(root.cert, [member], at=later)
    with pytest.raises(PeerRefused, match="no certificate"):
        verify_peer_chain(root.cert, [])


def test_node_bundle_round_trip_and_tampering(tmp_path: Path) -> None:
    root = init_ca(CertPaths(tmp_path / "ca"), PASSPHRASE, common_name="fog")
    bundle = make_bundle(root, "attic", validity_days=365)
    path = tmp_path / "attic.fognode-bundle"
    write_bundle(bundle, path)
    assert mode(path) == 0o600
    assert path.read_text().startswith("# fognode node bundle for attic.local")
    back = read_bundle(path)
    assert back.name == "attic.local" and back.ca == root.cert
    certs, issuer = CertPaths(tmp_path / "certs"), CertPaths(tmp_path / "issuer")
    install_bundle(back, certs, issuer)
    assert mode(certs.node_key) == 0o600 and mode(issuer.issuer_key) == 0o600
    assert not (certs.directory / "issuer.key").exists()  # the server never gets it
    policy = RenewalPolicy(names=None, defaults=SubjectNames.parse(["spezillmfog.local"]))
    assert renew(certs, issuer, None, policy) is not None
    assert renew(certs, issuer, None, policy) is None  # fresh: nothing to do
    # Another CA's issuing certificate put in: refused on reading.
    other = make_bundle(build_ca("rogue"), "attic", validity_days=30)
    text = path.read_bytes().replace(
        bundle.issuer.cert.public_bytes(serialization.Encoding.PEM),
        other.issuer.cert.public_bytes(serialization.Encoding.PEM),
    )
    forged = tmp_path / "forged"
    forged.write_bytes(text)
    with pytest.raises(CertError):
        read_bundle(forged)


def test_check_warns_about_the_old_layout_and_passes_the_new(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "c")
    findings = check_trust(pki.paths, pki.issuer, renew_before=dt.timedelta(days=30))
    assert [f.level for f in findings] == ["ok"] * len(findings), findings
    assert {f.subject for f in findings} == {"ca", "server", "issuer", "node"}

    # The old layout: an unconstrained ten-year CA whose key sits beside the
    # server's files, and a 397-day certificate it signed itself.
    old = make_legacy_pki(tmp_path / "old").paths
    found = check_trust(old, CertPaths(tmp_path / "none"), renew_before=dt.timedelta(days=30))
    said = "\n".join(f"{f.level} {f.message}" for f in found)
    assert "no name constraints" in said and "new app build" in said
    assert "valid for 3650 days" in said
    assert said.count("sits in the directory the serving process reads") == 2
    assert "valid for 397 days" in said
    # The old CA still renews (the root signs directly) until the operator moves.
    signer = signing_authority(CertPaths(tmp_path / "none"), old, PASSPHRASE)
    assert signer.legacy and signer.chain == ()
    with pytest.raises(CertError, match="path length 0"):
        build_issuer(load_ca(old, PASSPHRASE, need_key=True), "n")
