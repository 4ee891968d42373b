"""Hand the CA to phones: PEM .crt, DER .cer, and an iOS configuration profile."""

from __future__ import annotations

import plistlib
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from .inspect import fingerprint
from .store import PUBLIC, write_atomic


def mobileconfig(ca: x509.Certificate, *, display_name: str) -> bytes:
    """An unsigned iOS/macOS profile that installs the CA as a root certificate.

    After installing it, iOS still needs "Enable full trust" under
    Settings > General > About > Certificate Trust Settings.
    """
    der = ca.public_bytes(Encoding.DER)
    digest = fingerprint(ca, colons=False)
    payload_uuid = str(uuid.uuid5(uuid.NAMESPACE_OID, f"fognode-ca-payload-{digest}")).upper()
    profile_uuid = str(uuid.uuid5(uuid.NAMESPACE_OID, f"fognode-ca-profile-{digest}")).upper()
    profile = {
        "PayloadContent": [
            {
                "PayloadCertificateFileName": "fognode-ca.cer",
                "PayloadContent": der,
                "PayloadDescription": "Adds the fog node's root certificate",
                "PayloadDisplayName": display_name,
                "PayloadIdentifier": f"org.fognode.ca.{digest[:16].lower()}",
                "PayloadType": "com.apple.security.root",
                "PayloadUUID": payload_uuid,
                "PayloadVersion": 1,
            }
        ],
        "PayloadDescription": f"Trust the fog node on this network. SHA-256: {fingerprint(ca)}",
        "PayloadDisplayName": display_name,
        "PayloadIdentifier": f"org.fognode.profile.{digest[:16].lower()}",
        "PayloadRemovalDisallowed": False,
        "PayloadType": "Configuration",
        "PayloadUUID": profile_uuid,
        "PayloadVersion": 1,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


@dataclass(frozen=True)
class CaExport:
    """The CA in every form a phone or app wants, in memory (all public)."""

    pem: bytes  # .crt: apps that pin the CA, curl --cacert, Android
    der: bytes  # .cer: Android, Windows
    mobileconfig: bytes  # iOS, iPadOS, macOS profile
    fingerprint: str  # SHA-256, colon-separated hex, what a phone shows
    name: str  # the CA's common name, what a phone lists


def export_forms(ca: x509.Certificate) -> CaExport:
    cn = ca.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    name = str(cn[0].value) if cn else "fognode CA"
    return CaExport(
        pem=ca.public_bytes(Encoding.PEM),
        der=ca.public_bytes(Encoding.DER),
        mobileconfig=mobileconfig(ca, display_name=name),
        fingerprint=fingerprint(ca),
        name=name,
    )


def export_ca(ca: x509.Certificate, out_dir: Path, *, name: str = "fognode-ca") -> dict[str, str]:
    """Write the CA in every form a phone or app wants; return what went where."""
    forms = export_forms(ca)
    files = {
        "pem": (out_dir / f"{name}.crt", forms.pem),
        "der": (out_dir / f"{name}.cer", forms.der),
        "mobileconfig": (out_dir / f"{name}.mobileconfig", forms.mobileconfig),
    }
    for path, data in files.values():
        write_atomic(path, data, PUBLIC)
    result = {kind: str(path) for kind, (path, _) in files.items()}
    result["sha256_fingerprint"] = forms.fingerprint
    return result
