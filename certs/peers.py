"""Fog membership by certificate: a node's peer credentials and their check.

A fog member proves, by mutual TLS, that it holds a *node certificate*: one
the fog's root signed itself (never a node's issuing CA), with EKU
clientAuth and serverAuth (it is both ends of a peer connection) and
fognode's own purpose OID `FOG_PEER`. A phone trusts the same root, and a
server certificate from the right CA therefore proves nothing here: it has
no marker, and it is signed by an issuing CA, not by the root.

Pure functions, no network: the fog (issue 23) builds its mutual TLS on
`load_node_credentials` and `verify_peer_chain`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .authority import NODE_VALIDITY_DAYS, Authority, now
from .constraints import constraints_of, outside
from .errors import CertError
from .issuer import sign_leaf
from .keys import KeyType, PrivateKey, generate_key, key_from_pem, same_public_key
from .store import CertPaths, load_certs, read_bytes

# fognode's private OID arc: 2.25.<UUID as an integer> (ITU-T X.667), from
# the UUID 5889eb04-92d9-4167-be47-f6b5ee8c480a; .1 is "fog peer".
FOGNODE_ARC = "2.25.117688175027308833604570656815557920778"
FOG_PEER = x509.ObjectIdentifier(f"{FOGNODE_ARC}.1")


class PeerRefused(CertError):
    """A presented peer certificate is not a member's: the message says why."""


def node_dns_name(node_name: str) -> str:
    """A node's name in its certificate: `kitchen` becomes `kitchen.local`."""
    name = node_name.strip().rstrip(".").lower()
    if not name or any(c.isspace() or c in "/:" for c in name):
        raise CertError(f"{node_name!r} is not a node name (letters, digits, dashes, dots)")
    return name if "." in name else f"{name}.local"


def issue_node_cert(
    root: Authority,
    node_name: str,
    *,
    key_type: KeyType = "ecdsa-p256",
    validity_days: float = NODE_VALIDITY_DAYS,
) -> tuple[x509.Certificate, PrivateKey]:
    if root.key is None:
        raise CertError("a node certificate is signed by the fog's root CA: it needs its key")
    dns = node_dns_name(node_name)
    refused = outside(constraints_of(root.cert), [dns], [])
    if refused:
        raise CertError(f"the fog's CA may not vouch for {dns}; name the node within .local")
    key = generate_key(key_type)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fognode"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "fog node"),
            x509.NameAttribute(NameOID.COMMON_NAME, dns),
        ]
    )
    cert = sign_leaf(
        root,
        subject,
        key,
        validity_days,
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH, FOG_PEER],
        names=[x509.DNSName(dns)],
    )
    return cert, key


@dataclass(frozen=True)
class NodeCredentials:
    """What a node presents to its peers, and the root it checks them against."""

    cert: x509.Certificate
    key: PrivateKey
    ca: x509.Certificate

    @property
    def name(self) -> str:
        return peer_name(self.cert)


def load_node_credentials(paths: CertPaths) -> NodeCredentials | None:
    """This node's peer credentials from its certificate directory, checked;
    None when it has none (then it is no fog member: fog membership is off)."""
    if not paths.node_cert.exists() and not paths.node_key.exists():
        return None
    cert = load_certs(paths.node_cert, "node certificate")[0]
    key = key_from_pem(read_bytes(paths.node_key, "node key"))
    ca = load_certs(paths.ca_cert, "CA certificate")[0]
    if not same_public_key(key, cert):
        raise CertError(f"the node key {paths.node_key} does not belong to {paths.node_cert}")
    verify_peer_chain(ca, [cert])
    return NodeCredentials(cert, key, ca)


@dataclass(frozen=True)
class PeerIdentity:
    name: str  # the node's DNS name in its certificate, e.g. kitchen.local
    fingerprint: str  # SHA-256 of the certificate, hex
    not_after: dt.datetime


def peer_name(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    names = san.get_values_for_type(x509.DNSName)
    return names[0] if names else ""


def verify_peer_chain(
    ca: x509.Certificate, chain: Sequence[x509.Certificate], *, at: dt.datetime | None = None
) -> PeerIdentity:
    """Accept a presented chain only if its first certificate is a node
    certificate that this fog's root signed directly, valid now, within the
    root's name constraints, with clientAuth, serverAuth and `FOG_PEER`.

    Anything the peer sends after its own certificate is ignored: a member's
    certificate needs no intermediate, and accepting one would let a node's
    issuing CA (which signs server certificates on that node) mint members.
    """
    if not chain:
        raise PeerRefused("the peer presented no certificate")
    leaf = chain[0]
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([ca]))
        .time(at or now())
        .max_chain_depth(0)
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, [])
    except verification.VerificationError as exc:
        raise PeerRefused(f"not signed by this fog's CA, or not valid now ({exc})") from None
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise PeerRefused("the certificate names no purpose (no extended key usage)") from None
    missing = [
        label
        for label, oid in (
            ("clientAuth", ExtendedKeyUsageOID.CLIENT_AUTH),
            ("serverAuth", ExtendedKeyUsageOID.SERVER_AUTH),
            ("fognode peer", FOG_PEER),
        )
        if oid not in usages
    ]
    if missing:
        raise PeerRefused(
            f"not a node certificate (no {', '.join(missing)}): a server certificate from "
            "the fog's CA does not make a member"
        )
    return PeerIdentity(
        name=peer_name(leaf),
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        not_after=leaf.not_valid_after_utc,
    )
