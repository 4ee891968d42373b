"""A server certificate that follows the LAN: the node's own name, this machine's addresses now.

Without configured names, `fognode certs renew` re-issues the certificate
when this machine's LAN address is not in it (DHCP gave another one) or the
node's own mDNS name (fognode-<id>.local) is missing; it keeps every name
issued by hand and drops only LAN addresses this machine no longer has. A
renewal that sees no LAN at all (the service's renewal runs without a
network) changes nothing about addresses.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from fognode.certs.issuer import SubjectNames, cert_names, default_names, followed_names
from fognode.certs.lifecycle import RenewalPolicy, renew
from fognode.certs.store import load_certs
from tests.support.pki import make_pki

NODE = "fognode-1a2b3c4d.local."


def names_of(path: Path) -> SubjectNames:
    return cert_names(load_certs(path, "server certificate")[0])


def test_the_default_names_carry_the_nodes_own_name() -> None:
    names = default_names(["10.1.2.3", "8.8.8.8"], [NODE])
    assert names[:2] == ["spezillmfog.local", "fognode-1a2b3c4d.local"]
    assert "10.1.2.3" in names and "8.8.8.8" not in names  # a LAN CA names no public address
    follow = followed_names(["10.1.2.3", "127.0.0.1", "8.8.8.8"], [NODE])
    assert follow.dns == ("fognode-1a2b3c4d.local",)
    assert follow.ips == (ipaddress.ip_address("10.1.2.3"),)


def test_a_renewal_follows_a_new_address_and_keeps_names_issued_by_hand(tmp_path: Path) -> None:
    pki = make_pki(
        tmp_path / "c", names=("spezillmfog.local", "by-hand.local", "10.0.0.5", "127.0.0.1")
    )
    lan = ["10.0.0.5"]

    def policy(addresses: list[str]) -> RenewalPolicy:
        return RenewalPolicy(
            names=None,
            defaults=SubjectNames.parse(default_names(addresses, [NODE])),
            follow=followed_names(addresses, [NODE]),
        )

    # The node's own name is missing: re-issued with it, nothing else lost.
    assert "fognode-1a2b3c4d.local" in (renew(pki.paths, pki.issuer, None, policy(lan)) or "")
    first = names_of(pki.paths.server_cert)
    assert {"spezillmfog.local", "by-hand.local", "fognode-1a2b3c4d.local"} <= set(first.dns)
    assert renew(pki.paths, pki.issuer, None, policy(lan)) is None  # up to date

    # DHCP moved the machine: the new address in, the old one (maybe another
    # machine's now) out, loopback and the names kept.
    reason = renew(pki.paths, pki.issuer, None, policy(["10.0.0.77"]))
    assert reason is not None and "10.0.0.77" in reason
    moved = names_of(pki.paths.server_cert)
    assert set(first.dns) == set(moved.dns)
    assert {str(ip) for ip in moved.ips} == {"127.0.0.1", "10.0.0.77"}

    # A renewal that sees no LAN (no network): nothing about addresses changes.
    assert renew(pki.paths, pki.issuer, None, policy([])) is None
    assert names_of(pki.paths.server_cert) == moved


def test_configured_names_are_not_followed(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "c", names=("spezillmfog.local",))
    configured = RenewalPolicy(
        names=SubjectNames.parse(["spezillmfog.local"]),
        defaults=SubjectNames.parse(["spezillmfog.local"]),
        follow=followed_names(["10.0.0.5"], [NODE]),
    )
    assert renew(pki.paths, pki.issuer, None, configured) is None
