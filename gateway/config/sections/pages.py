"""The operator's pages: status page, sign-in, phone onboarding (web/).

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    Field,
)

from ..paths import (
    default_session_key_file,
)


class PageSettings(BaseModel):
    """The operator's pages: status page, sign-in, phone onboarding (web/)."""

    status_page: bool = Field(
        True,
        description="Serve the status page at `/` to administrators who sign in from a browser "
        "(an admin API key or a Firebase admin's ID token).",
    )
    status_refresh_seconds: float = Field(
        2.0, gt=0, le=300, description="How often an open status page fetches fresh values."
    )
    session_lifetime: float = Field(
        3600,
        ge=60,
        le=7 * 86400,
        description="Seconds a status page sign-in lasts; then the browser signs in again.",
    )
    session_key_file: Path = Field(
        default_factory=default_session_key_file,
        description="Key that signs the status page's session cookies, made (mode 0600) at "
        "first start. Delete it and restart to sign every browser out.",
    )
    onboarding: bool | None = Field(
        None,
        description="Serve the phone onboarding page (QR code and the CA for phones) on its own "
        "plain-HTTP port. Default: on when TLS is on, off without TLS.",
    )
    onboarding_port: int = Field(
        80,
        ge=1,
        le=65535,
        description="Port of the onboarding page, on the API's address. If it cannot be bound "
        "(port 80 needs "
        "CAP_NET_BIND_SERVICE), the node logs how to fix it and serves without the page.",
    )
    onboarding_url: AnyHttpUrl | None = Field(
        None,
        description="Base URL phones open for the onboarding page (a DNS name, a port a router "
        "or compose forwards), put in its QR code; `fognode certs qr` uses it too. Default: "
        "`http://<this machine's LAN address>[:port]`.",
    )
