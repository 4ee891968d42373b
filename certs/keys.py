"""Private keys: generation and PEM (de)serialisation, encrypted or not."""

from __future__ import annotations

from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from .errors import CertError

KeyType = Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"]
KEY_TYPES: tuple[KeyType, ...] = ("ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096")

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_key(key_type: KeyType = "ecdsa-p256") -> PrivateKey:
    """ECDSA P-256 by default: small, fast handshakes, accepted by every
    current phone. RSA stays available for old clients."""
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    bits = int(key_type.split("-")[1])
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_to_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def key_from_pem(data: bytes, passphrase: bytes | None = None) -> PrivateKey:
    try:
        key: CertificateIssuerPrivateKeyTypes = serialization.load_pem_private_key(
            data, password=passphrase
        )  # type: ignore[assignment]
    except TypeError as exc:
        # Raised both for "encrypted but no passphrase" and the reverse.
        if passphrase is None:
            raise CertError(
                "the key is encrypted: give its passphrase (FOGNODE_CA_PASSPHRASE or "
                "FOGNODE_CA_PASSPHRASE_FILE)"
            ) from exc
        raise CertError("the key is not encrypted, but a passphrase was given") from exc
    except ValueError as exc:
        raise CertError(
            "cannot decrypt or parse the key (wrong passphrase, or not a PEM key)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertError(f"unsupported key type {type(key).__name__}; use ECDSA or RSA")
    return key


def same_public_key(key: PrivateKey, cert: x509.Certificate) -> bool:
    """Whether ``key`` is the private half of ``cert``'s public key."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
