"""Client connections and requests: caps, deadlines, sizes.

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    Field,
)


class ConnectionSettings(BaseModel):
    """Client connections and requests: caps, deadlines, sizes."""

    client_first_byte_timeout: float = Field(
        10,
        gt=0,
        description="Seconds a new connection may take to send the first byte of its "
        "first request, TLS handshake included; then it is closed.",
    )
    keepalive_timeout: float = Field(
        75,
        gt=0,
        description="Seconds an idle keep-alive connection stays open between requests.",
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="Client connections at once (0: the descriptor limit less a reserve for "
        "the upstream pool and the rest). Beyond it the oldest idle one is closed, or the "
        "new one refused if all are busy.",
    )
    max_connections_per_client: int = Field(
        64,
        ge=0,
        description="Connections from one client address (an IPv6 /64) at once (0: no cap). "
        "Raise it, or set 0, behind a reverse proxy.",
    )
    header_timeout: float = Field(
        30, gt=0, description="Seconds a client may take to send a request's headers."
    )
    body_timeout: float = Field(
        120,
        gt=0,
        description="Seconds a client may take to send a request body (large images on a "
        "slow Wi-Fi take a while); then 408.",
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted (images in chat requests are base64).",
    )
