"""Issue the server certificate the gateway presents.

Apple's rules decide the shape (support.apple.com/103769 and /102028): the
host name must be a DNS subjectAltName (the common name is ignored), the EKU
must include serverAuth, RSA keys need 2048 bits or more, signatures SHA-2,
and the validity may not exceed 825 days for a certificate from a CA the
user installed (398 for public CAs). fognode keeps them much shorter: there
is no revocation, so a leaked server key stays trusted until its
certificate ends, and renewal is automatic, so short costs nothing. At most
90 days, renewed when 30 are left (Let's Encrypt's rhythm).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .authority import Authority, now, signature_hash
from .constraints import LAN_NETWORKS, constraints_of, outside
from .errors import CertError
from .keys import KeyType, PrivateKey, generate_key

DEFAULT_VALIDITY_DAYS = 90
MAX_VALIDITY_DAYS = 90
DEFAULT_HOST_NAME = "spezillmfog.local"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SubjectNames:
    dns: tuple[str, ...]
    ips: tuple[IPAddress, ...]

    @classmethod
    def parse(cls, names: Iterable[str]) -> SubjectNames:
        """Split a mixed list of host names and IP addresses, keeping order."""
        dns: list[str] = []
        ips: list[IPAddress] = []
        for raw in names:
            name = raw.strip().rstrip(".")
            if not name:
                continue
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                if any(c.isspace() for c in name) or "/" in name:
                    raise CertError(f"{raw!r} is neither a host name nor an IP address") from None
                if name.lower() not in dns:
                    dns.append(name.lower())
            else:
                if ip not in ips:
                    ips.append(ip)
        if not dns:
            raise CertError("a server certificate needs at least one DNS name")
        return cls(tuple(dns), tuple(ips))

    def covered_by(self, cert: x509.Certificate) -> bool:
        have = cert_names(cert)
        return set(self.dns) <= set(have.dns) and set(self.ips) <= set(have.ips)


def cert_names(cert: x509.Certificate) -> SubjectNames:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return SubjectNames((), ())
    return SubjectNames(
        tuple(n.lower() for n in san.get_values_for_type(x509.DNSName)),
        tuple(
            ip
            for ip in san.get_values_for_type(x509.IPAddress)
            if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
        ),
    )


def default_names(lan_ips: Iterable[str] = (), node_names: Iterable[str] = ()) -> list[str]:
    """spezillmfog.local (the client contract), the node's own mDNS host name
    (``node_names``: fognode-<id>.local, which resolves on the LAN whatever
    address DHCP gives), this machine's .local name, localhost, and the LAN
    addresses given (the gateway knows them; certs/ does not look at the
    network) that are private, link-local or loopback: a CA for the LAN may
    not vouch for a public address."""
    names = [
        DEFAULT_HOST_NAME,
        *(n.rstrip(".").lower() for n in node_names),
        f"{socket.gethostname().split('.')[0]}.local",
        "localhost",
        "127.0.0.1",
        "::1",
    ]
    names.extend(str(ip) for ip in lan_only(lan_ips) if str(ip) not in names)
    return list(dict.fromkeys(names))


def lan_only(addresses: Iterable[str]) -> list[IPAddress]:
    """The addresses a LAN CA may name: private, link-local or loopback."""
    found = []
    for raw in addresses:
        address = ipaddress.ip_address(raw)
        if any(address in n for n in LAN_NETWORKS) and address not in found:
            found.append(address)
    return found


def followed_names(lan_ips: Iterable[str], node_names: Iterable[str]) -> SubjectNames:
    """What a certificate without configured names keeps up with: the node's
    own host name and this machine's LAN addresses as they are now (a
    renewal re-issues it when one is missing: DHCP gave another address)."""
    return SubjectNames(
        tuple(n.rstrip(".").lower() for n in node_names),
        tuple(a for a in lan_only(lan_ips) if not a.is_loopback),
    )


def issue_server_cert(
    authority: Authority,
    names: SubjectNames,
    *,
    key_type: KeyType = "ecdsa-p256",
    validity_days: float = DEFAULT_VALIDITY_DAYS,
    key: PrivateKey | None = None,
) -> tuple[x509.Certificate, PrivateKey]:
    if authority.key is None:
        raise CertError("issuing a certificate needs the CA key (and its passphrase)")
    if validity_days > MAX_VALIDITY_DAYS:
        raise CertError(
            f"server certificates are valid {MAX_VALIDITY_DAYS} days at most, and renewed "
            f"automatically (asked for {validity_days:g})"
        )
    if validity_days <= 0:
        raise CertError("validity must be positive")
    refused = outside(constraints_of(authority.cert), names.dns, names.ips)
    if refused:
        raise CertError(
            f"this CA may not vouch for {', '.join(refused)}: it is limited to LAN names and "
            "addresses (.local, localhost, private and link-local ranges, and the names it was "
            "made with; see `fognode certs show`)"
        )
    key = key or generate_key(key_type)
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names.dns]
    san += [x509.IPAddress(ip) for ip in names.ips]
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fognode"),
            x509.NameAttribute(NameOID.COMMON_NAME, names.dns[0]),
        ]
    )
    cert = sign_leaf(
        authority,
        subject,
        key,
        validity_days,
        usages=[ExtendedKeyUsageOID.SERVER_AUTH],
        names=san,
    )
    return cert, key


def sign_leaf(
    authority: Authority,
    subject: x509.Name,
    key: PrivateKey,
    validity_days: float,
    *,
    usages: list[x509.ObjectIdentifier],
    names: list[x509.GeneralName],
) -> x509.Certificate:
    """What every end-entity certificate fognode signs has in common: not a
    CA, a signing key (and, for RSA, key encipherment), key identifiers, a
    start a little in the past for clients whose clock lags, an end no later
    than the issuer's."""
    if authority.key is None:
        raise CertError("signing a certificate needs the CA key")
    public = key.public_key()
    start = now() - dt.timedelta(minutes=5)
    end = min(now() + dt.timedelta(days=validity_days), authority.cert.not_valid_after_utc)
    issuer_ski = authority.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(authority.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value),
            critical=False,
        )
        .sign(authority.key, signature_hash(authority.key))
    )
