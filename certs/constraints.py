"""Which names the fog's CA may vouch for: the LAN, and nothing on the internet.

Phones install the fog's CA (or an app bundles it). Without name
constraints that CA could sign a certificate for any website, and whoever
holds a signing key could impersonate a bank to every onboarded phone. So
every CA fognode makes carries a critical nameConstraints extension that
permits only what a LAN node is called: `.local` names (mDNS), `localhost`,
the names the operator configures, and private, link-local and loopback
addresses. A certificate for `example.com` signed under it fails every
verifier that enforces name constraints.

Where they are enforced (docs/certificates.md has the sources): RFC 5280
makes a trust anchor's own constraints optional. OpenSSL, Firefox and
Chrome (112 and later) apply the root's constraints; Android's platform
verifier (Conscrypt's TrustManagerImpl on OpenJDK's PKIX validator) does
not, it only applies constraints of certificates below the anchor. That is
why a node's server certificates are signed by a constrained *intermediate*
(authority.build_issuer) rather than by the root: the constraints then sit
in the chain, where Android, iOS and everyone else enforce them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from cryptography import x509

from .errors import CertError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# DNS subtrees (RFC 5280: "local" matches local and every name below it).
LAN_DNS: tuple[str, ...] = ("local", "localhost")

# Private (RFC 1918, RFC 4193), link-local (RFC 3927, RFC 4291) and loopback.
LAN_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
    ipaddress.IPv4Network("169.254.0.0/16"),
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("fc00::/7"),
    ipaddress.IPv6Network("fe80::/10"),
    ipaddress.IPv6Network("::1/128"),
)


def _dns_subtree(name: str) -> str:
    name = name.strip().rstrip(".").lower()
    if name.startswith("*."):
        name = name[2:]
    if not name or any(c.isspace() or c == "/" for c in name):
        raise CertError(f"{name!r} is not a DNS name to permit")
    return name


def lan_constraints(extra: Iterable[str] = ()) -> x509.NameConstraints:
    """The LAN subtrees, plus ``extra`` DNS names or networks the operator
    uses (a configured name like ``fognode.home.arpa``, a VPN range like
    ``100.64.0.0/10``); names already inside a LAN subtree add nothing."""
    dns = list(LAN_DNS)
    networks = list(LAN_NETWORKS)
    for raw in extra:
        try:
            network = ipaddress.ip_network(raw.strip(), strict=False)
        except ValueError:
            name = _dns_subtree(raw)
            if not _dns_permitted(name, dns):
                dns.append(name)
        else:
            if not any(network.subnet_of(n) for n in networks if n.version == network.version):  # type: ignore[arg-type]
                networks.append(network)
    permitted: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    permitted += [x509.IPAddress(n) for n in networks]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def constraints_of(cert: x509.Certificate) -> x509.NameConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def is_constrained(cert: x509.Certificate) -> bool:
    """Whether the CA may only vouch for some names (at least DNS names)."""
    constraints = constraints_of(cert)
    return constraints is not None and any(
        isinstance(n, x509.DNSName) for n in constraints.permitted_subtrees or ()
    )


def _dns_permitted(name: str, subtrees: Sequence[str]) -> bool:
    name = name.lower().rstrip(".")
    return any(name == s or name.endswith("." + s) for s in subtrees)


def outside(
    constraints: x509.NameConstraints | None, dns: Iterable[str], ips: Iterable[IPAddress]
) -> list[str]:
    """The names a CA with ``constraints`` may not vouch for (none when unconstrained)."""
    if constraints is None:
        return []
    permitted = constraints.permitted_subtrees or ()
    dns_trees = [n.value.lower().lstrip(".") for n in permitted if isinstance(n, x509.DNSName)]
    networks = [
        n.value
        for n in permitted
        if isinstance(n, x509.IPAddress)
        and isinstance(n.value, ipaddress.IPv4Network | ipaddress.IPv6Network)
    ]
    bad = [name for name in dns if dns_trees and not _dns_permitted(name, dns_trees)]
    bad += [
        str(ip)
        for ip in ips
        if networks and not any(ip.version == n.version and ip in n for n in networks)
    ]
    return bad
