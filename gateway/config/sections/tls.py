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
    default_ca_dir,
    default_certs_dir,
    default_issuer_dir,
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
        description="What the serving process reads: `ca.crt`, `server.crt` (with its issuing "
        "CA), `server.key`, and the fog peer credentials `node.crt` and `node.key`. Never a CA "
        "key (docs/certificates.md).",
    )
    ca_dir: Path = Field(
        default_factory=default_ca_dir,
        description="The fog's root CA (`ca.crt`, `ca.key` encrypted, `ca.passphrase` from "
        "setup.sh), used only by `fognode certs init` and `fognode certs issue --node`. Keep it "
        "away from the serving user; the service and compose set-ups never give it one.",
    )
    issuer_dir: Path = Field(
        default_factory=default_issuer_dir,
        description="This node's issuing CA (`issuer.crt`, `issuer.key`), read only by "
        "`fognode certs renew` (the fognode-certs unit, the compose fognode-certs service), "
        "never by the serving process.",
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
        "issue time: `spezillmfog.local`, `<hostname>.local`, `localhost`, loopback and the "
        "private LAN addresses; renewals keep the names of the current certificate. Names "
        "outside `.local`, `localhost` and private ranges must be set before `fognode certs "
        "init`: the CA is constrained to them for good.",
    )
    cert_key_type: Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"] = Field(
        "ecdsa-p256",
        description="Key type of renewed server certificates (RSA for old clients).",
    )
    cert_validity_days: float = Field(
        90,
        gt=0,
        le=90,
        description="Validity of server certificates `fognode certs renew` issues: 90 days at "
        "most, since nothing revokes a leaked key and renewal is automatic.",
    )
    cert_renew_before_days: float = Field(
        30,
        ge=0,
        description="`fognode certs renew` replaces the server certificate this many days before "
        "it expires; the server warns from then on until new files appear.",
    )
    cert_check_interval: float = Field(
        60,
        gt=0,
        description="Seconds between the server's looks at its certificate files (a `stat`): "
        "it reloads them when they changed (renewed, or re-issued for a new address), without "
        "a restart. An overdue renewal is logged at most hourly.",
    )
    ca_passphrase: SecretStr | None = Field(
        None,
        description="Passphrase of the fog's root CA key, for `fognode certs init` and `issue "
        "--node` run without a terminal (the environment variable; never given to the "
        "server). Prefer `ca_passphrase_file`.",
    )
    ca_passphrase_file: Path | None = Field(
        None,
        description="File whose first line is the root CA key's passphrase, for the same "
        "commands (default: `<ca_dir>/ca.passphrase` when setup.sh made one).",
    )

    tls_ticket_secret: SecretStr | None = Field(
        None,
        description="Secret the TLS session ticket keys are derived from (a new key every 12 "
        "hours). Unset: the main process makes a random one at start and hands it to every "
        "worker, so a client resumes its session whichever worker answers; tickets then last "
        "until the node restarts. Set it (64 hex digits) only to keep tickets across restarts.",
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
