"""TLS: the certificate the node serves, the local CA, renewal.

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
)
from pydantic_settings import NoDecode

from ..paths import (
    default_certs_dir,
)


class TlsSettings(BaseModel):
    """TLS: the certificate the node serves, the local CA, renewal."""

    tls: bool = Field(
        True,
        description="Serve HTTPS with the local CA's server certificate. Turn off only for "
        "development (plain HTTP, as the reference's development mode).",
    )
    certs_dir: Path = Field(
        default_factory=default_certs_dir,
        description="Where `fognode certs` keeps `ca.crt`, `ca.key`, `server.crt` and "
        "`server.key`.",
    )
    tls_cert_file: Path | None = Field(
        None,
        description="Server certificate chain (PEM), if you bring your own. Default: "
        "`<certs_dir>/server.crt`.",
    )
    tls_key_file: Path | None = Field(
        None, description="Server key (PEM, unencrypted). Default: `<certs_dir>/server.key`."
    )
    tls_ca_file: Path | None = Field(
        None,
        description="CA the server certificate must chain to; fognode refuses to start "
        "otherwise. Default: `<certs_dir>/ca.crt`.",
    )
    cert_names: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="DNS names and IP addresses for the server certificate, comma-separated "
        "or a JSON list. When set, a certificate missing one of them is re-issued. Default, at "
        "issue time: `spezillmfog.local`, `<hostname>.local`, `localhost`, loopback and the LAN "
        "addresses; renewals keep the names of the current certificate.",
    )
    cert_key_type: Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"] = Field(
        "ecdsa-p256",
        description="Key type of renewed server certificates (RSA for old clients).",
    )
    cert_validity_days: float = Field(
        397,
        gt=0,
        le=825,
        description="Validity of issued server certificates. iPhones refuse more than 825 days "
        "from a user-installed CA; Apple recommends at most 397.",
    )
    cert_renew_before_days: float = Field(
        30, ge=0, description="Renew the server certificate this many days before it expires."
    )
    cert_check_interval: float = Field(
        3600,
        gt=0,
        description="Seconds between checks of the certificate files (reload when they change, "
        "renew when expiry nears).",
    )
    ca_passphrase: SecretStr | None = Field(
        None,
        description="Passphrase of the CA key, needed for automatic renewal. Prefer "
        "`ca_passphrase_file`.",
    )
    ca_passphrase_file: Path | None = Field(
        None,
        description="File whose first line is the CA key passphrase (e.g. a Docker secret). "
        "Without this or `ca_passphrase`, `<certs_dir>/ca.passphrase` is used if it exists "
        "(setup.sh writes a random one there).",
    )

    @property
    def server_cert_file(self) -> Path:
        return self.tls_cert_file or self.certs_dir / "server.crt"

    @property
    def server_key_file(self) -> Path:
        return self.tls_key_file or self.certs_dir / "server.key"

    @property
    def ca_cert_file(self) -> Path:
        return self.tls_ca_file or self.certs_dir / "ca.crt"
