"""The certificates' life: create the root, sign, renew, decide when.

These functions do file I/O and (for RSA) slow key generation; callers run
them off the event loop. None of them runs in the process that serves the
LAN: the gateway only loads what they write (ARCHITECTURE.md, Trust).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .authority import Authority, build_ca, load_ca, load_issuer, now, save_ca
from .errors import CertError
from .inspect import check_server_pair
from .issuer import DEFAULT_VALIDITY_DAYS, SubjectNames, cert_names, issue_server_cert
from .keys import KeyType, key_from_pem, key_to_pem
from .passphrase import check_strength
from .store import PRIVATE, PUBLIC, CertPaths, load_certs, read_bytes, write_atomic

RENEW_BEFORE_DAYS = 30


def init_ca(
    paths: CertPaths,
    passphrase: bytes,
    *,
    common_name: str,
    key_type: KeyType = "ecdsa-p256",
    force: bool = False,
    permit: tuple[str, ...] = (),
) -> Authority:
    check_strength(passphrase)
    authority = build_ca(common_name, key_type=key_type, permit=permit)
    save_ca(paths, authority, passphrase, force=force)
    return authority


@dataclass(frozen=True)
class Signer:
    """What signs this node's server certificates, and what the server must
    send with them (the issuing CA's certificate; nothing for a legacy root)."""

    authority: Authority
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate
    legacy: bool


def signing_authority(issuer: CertPaths, certs: CertPaths, passphrase: bytes | None) -> Signer:
    """The node's issuing CA; for a CA made before there were issuing CAs,
    the root itself (it needs the passphrase): in the renewal's directory
    where `fognode service install` put it, or, as setup.sh once left it,
    beside the server's files."""
    if issuer.issuer_cert.exists():
        authority = load_issuer(issuer)
        root = load_certs(issuer.ca_cert, "fog CA certificate")[0]
        return Signer(authority, (authority.cert,), root, legacy=False)
    for old in (issuer, certs):
        if old.ca_key.exists():
            authority = load_ca(old, passphrase, need_key=True)
            return Signer(authority, (), authority.cert, legacy=True)
    raise CertError(
        f"no issuing CA in {issuer.directory}: on the machine that holds the fog's CA run "
        "`fognode certs issue --node NAME` and install the bundle here with "
        "`fognode certs install FILE` (./setup.sh does both on the CA's own machine)"
    )


def issue_to_files(
    certs: CertPaths,
    signer: Signer,
    names: SubjectNames,
    *,
    key_type: KeyType = "ecdsa-p256",
    validity_days: float = DEFAULT_VALIDITY_DAYS,
    group: int | None = None,
) -> x509.Certificate:
    """Issue a server certificate and write its key and its chain.

    ``group``: make the key readable by that group (0640), for a server that
    runs as another user than the renewal (the systemd units, compose)."""
    cert, key = issue_server_cert(
        signer.authority, names, key_type=key_type, validity_days=validity_days
    )
    # Key first, then the certificate: a reader that sees the new certificate
    # finds the new key already in place. A reader between the two writes
    # sees a mismatched pair, which load_server_pair() refuses, so it keeps
    # the old one. The issuing CA follows the leaf (clients need it to build
    # the path to the root they trust); the root itself is not sent.
    key_mode = PRIVATE if group is None else 0o640
    write_atomic(certs.server_key, key_to_pem(key), key_mode, group=group)
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in (cert, *signer.chain))
    write_atomic(certs.server_cert, chain, PUBLIC, group=group)
    root = signer.root.public_bytes(Encoding.PEM)
    if not certs.ca_cert.exists() or certs.ca_cert.read_bytes() != root:
        write_atomic(certs.ca_cert, root, PUBLIC, group=group)
    return cert


@dataclass(frozen=True)
class ServerPair:
    chain: list[x509.Certificate]
    ca: x509.Certificate

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def load_server_pair(cert_file: Path, key_file: Path, ca_file: Path) -> ServerPair:
    """Load and check the pair the server would present; raise CertError if unusable."""
    chain = load_certs(cert_file, "server certificate")
    ca = load_certs(ca_file, "CA certificate")[0]
    key = key_from_pem(read_bytes(key_file, "server key"))
    check_server_pair(chain, key, ca)
    return ServerPair(chain, ca)


def renewal_reason(
    leaf: x509.Certificate,
    *,
    renew_before: dt.timedelta,
    wanted: SubjectNames | None = None,
    follow: SubjectNames | None = None,
    at: dt.datetime | None = None,
) -> str | None:
    """Why the certificate should be replaced now, or None if it is fine.
    ``wanted``: configured names; ``follow``: without them, the node's own
    name and this machine's LAN addresses now (followed_names)."""
    when = at or now()
    left = leaf.not_valid_after_utc - when
    if left <= renew_before:
        return f"it expires in {left.total_seconds() / 86400:.1f} days"
    if wanted is not None and not wanted.covered_by(leaf):
        return "the configured names or addresses changed"
    missing = missing_names(leaf, follow) if wanted is None and follow is not None else []
    if missing:
        return f"it lacks {', '.join(missing)} (this machine's own name or address now)"
    return None


def missing_names(leaf: x509.Certificate, follow: SubjectNames) -> list[str]:
    have = cert_names(leaf)
    return [n for n in follow.dns if n not in have.dns] + [
        str(ip) for ip in follow.ips if ip not in have.ips
    ]


def renewal_names(
    current: x509.Certificate | None,
    configured: SubjectNames | None,
    defaults: SubjectNames,
    follow: SubjectNames | None = None,
) -> SubjectNames:
    """Configured names; else those of the current certificate (a renewal
    never drops a name the operator issued by hand) with what it follows
    (``follow``: the node's own name, this machine's LAN addresses now) added,
    and LAN addresses this machine no longer has dropped (one may be another
    machine's now); else the defaults."""
    if configured is not None:
        return configured
    if current is not None:
        names = cert_names(current)
        if names.dns:
            if follow is None:
                return names
            ips = names.ips
            if follow.ips:  # the addresses can be seen: drop those that left
                ips = tuple(ip for ip in ips if ip.is_loopback or ip in follow.ips)
            return SubjectNames(
                tuple(dict.fromkeys((*names.dns, *follow.dns))),
                tuple(dict.fromkeys((*ips, *follow.ips))),
            )
    return defaults


@dataclass(frozen=True)
class RenewalPolicy:
    names: SubjectNames | None  # configured names, if any
    defaults: SubjectNames  # for a first certificate
    # Without configured names: what the certificate keeps up with (the node's
    # own .local name, this machine's LAN addresses now; issuer.followed_names).
    follow: SubjectNames | None = None
    key_type: KeyType = "ecdsa-p256"
    validity_days: float = DEFAULT_VALIDITY_DAYS
    renew_before_days: float = RENEW_BEFORE_DAYS
    group: int | None = None


def renew(
    certs: CertPaths,
    issuer: CertPaths,
    passphrase: bytes | None,
    policy: RenewalPolicy,
    *,
    force: bool = False,
) -> str | None:
    """Issue a new server certificate when due; return why, or None.

    Due: none yet, unusable, expiring within ``renew_before_days``, missing
    a configured name, or, without configured names, missing the node's own
    name or one of this machine's LAN addresses (``policy.follow``), or
    signed by another CA than the node's signer now (a new bundle was
    installed)."""
    signer = signing_authority(issuer, certs, passphrase)
    current: x509.Certificate | None = None
    reason: str | None = "forced" if force else None
    try:
        pair = load_server_pair(certs.server_cert, certs.server_key, certs.ca_cert)
    except CertError as exc:
        reason = reason or f"the current one cannot be used ({exc})"
    else:
        current = pair.leaf
        if current.issuer != signer.authority.cert.subject:
            reason = reason or "it was signed by another CA than this node's issuing CA"
        reason = reason or renewal_reason(
            current,
            renew_before=dt.timedelta(days=policy.renew_before_days),
            wanted=policy.names,
            follow=policy.follow,
        )
    if reason is None:
        return None
    issue_to_files(
        certs,
        signer,
        renewal_names(current, policy.names, policy.defaults, policy.follow),
        key_type=policy.key_type,
        validity_days=policy.validity_days,
        group=policy.group,
    )
    return reason
