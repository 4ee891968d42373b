"""`fognode certs check`: what a careful operator should know about the trust set-up.

Each finding says what is wrong and what to do. Warnings: a CA that may
vouch for any website (made before name constraints) or lives too long, a
CA key where the serving process can read it, a server certificate valid
longer than 90 days or not being renewed, node credentials about to lapse.
"""

from __future__ import annotations

import datetime as dt
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509

from .authority import CA_LONG_LIVED_DAYS, now
from .constraints import is_constrained
from .errors import CertError
from .issuer import MAX_VALIDITY_DAYS
from .lifecycle import load_server_pair
from .store import CertPaths, load_certs

Level = Literal["ok", "warning", "error"]

MIGRATE = (
    "make a name-constrained CA (docs/certificates.md, 'Moving to a name-constrained CA'); "
    "a SpeziLLMFog app bundles its CA, so a new CA means a new app build"
)
CA_EXPIRY_WARNING = dt.timedelta(days=180)
NODE_EXPIRY_WARNING = dt.timedelta(days=60)


@dataclass(frozen=True)
class Finding:
    level: Level
    subject: str  # ca, server, issuer, node, files
    message: str


def _days(delta: dt.timedelta) -> str:
    return f"{delta.total_seconds() / 86400:.0f} days"


def check_ca(ca: x509.Certificate, at: dt.datetime) -> list[Finding]:
    found: list[Finding] = []
    if not is_constrained(ca):
        found.append(
            Finding(
                "warning",
                "ca",
                "the CA has no name constraints: it can vouch for any website to every phone "
                f"that trusts it; {MIGRATE}",
            )
        )
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    if lifetime > dt.timedelta(days=CA_LONG_LIVED_DAYS):
        found.append(
            Finding(
                "warning",
                "ca",
                f"the CA is valid for {_days(lifetime)} (fognode makes 5-year CAs): a root "
                f"without revocation should not outlive a few app builds; {MIGRATE}",
            )
        )
    left = ca.not_valid_after_utc - at
    if left < CA_EXPIRY_WARNING:
        found.append(
            Finding(
                "warning",
                "ca",
                f"the CA expires in {_days(left)}: make the next one and ship an app build "
                "with it before then (docs/certificates.md)",
            )
        )
    if not found:
        found.append(Finding("ok", "ca", f"name-constrained, {_days(left)} left"))
    return found


def check_trust(
    certs: CertPaths,
    issuer: CertPaths,
    *,
    renew_before: dt.timedelta,
    at: dt.datetime | None = None,
) -> list[Finding]:
    """Findings for the serving directory ``certs`` and the renewal's ``issuer``."""
    when = at or now()
    found: list[Finding] = []
    try:
        ca = load_certs(certs.ca_cert, "CA certificate")[0]
    except CertError as exc:
        return [Finding("error", "ca", str(exc))]
    found += check_ca(ca, when)
    for secret in (certs.ca_key, certs.directory / "ca.passphrase"):
        if secret.exists():
            found.append(
                Finding(
                    "warning",
                    "files",
                    f"{secret} sits in the directory the serving process reads: whoever takes "
                    "over the node can sign certificates. Keep the CA apart "
                    "(docs/certificates.md, 'Keep the CA key away from the server')",
                )
            )
    try:
        pair = load_server_pair(certs.server_cert, certs.server_key, certs.ca_cert)
    except CertError as exc:
        found.append(Finding("error", "server", str(exc)))
    else:
        leaf = pair.leaf
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        left = leaf.not_valid_after_utc - when
        if lifetime > dt.timedelta(days=MAX_VALIDITY_DAYS, minutes=10):
            found.append(
                Finding(
                    "warning",
                    "server",
                    f"the server certificate is valid for {_days(lifetime)}: a leaked key stays "
                    f"trusted that long; issue a {MAX_VALIDITY_DAYS}-day one with "
                    "`fognode certs renew --force`",
                )
            )
        if left <= renew_before:
            found.append(
                Finding(
                    "warning",
                    "server",
                    f"the server certificate expires in {_days(left)} and has not been renewed: "
                    "is the renewal running? (`systemctl status fognode-certs.timer`, or "
                    "`fognode certs renew`)",
                )
            )
        elif lifetime <= dt.timedelta(days=MAX_VALIDITY_DAYS, minutes=10):
            found.append(
                Finding("ok", "server", f"{_days(lifetime)} certificate, {_days(left)} left")
            )
    if issuer.issuer_cert.exists():
        found += _lapsing(issuer.issuer_cert, "issuer", "this node's issuing CA", when)
        key = issuer.issuer_key
        if key.exists() and stat.S_IMODE(key.stat().st_mode) & 0o077:
            found.append(Finding("warning", "files", f"{key} is readable by others"))
    elif not certs.ca_key.exists():
        found.append(
            Finding(
                "warning",
                "issuer",
                f"no issuing CA in {issuer.directory}: nothing here can renew the server "
                "certificate; install a node bundle (`fognode certs install FILE`)",
            )
        )
    if certs.node_cert.exists():
        found += _lapsing(certs.node_cert, "node", "this node's fog peer certificate", when)
    return found


def _lapsing(path: Path, subject: str, what: str, at: dt.datetime) -> list[Finding]:
    """Node credentials come from whoever holds the root: say so in time."""
    try:
        cert = load_certs(path, what)[0]
    except CertError as exc:
        return [Finding("error", subject, str(exc))]
    left = cert.not_valid_after_utc - at
    if left < NODE_EXPIRY_WARNING:
        message = f"{what} has {_days(left)} left; issue and install a new node bundle"
        return [Finding("warning", subject, message)]
    return [Finding("ok", subject, f"{what} has {_days(left)} left")]
