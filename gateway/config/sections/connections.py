"""Client connections: caps, deadlines and sizes of connections and requests.

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    Field,
)


class ConnectionSettings(BaseModel):
    """Client connections: caps, deadlines and sizes of connections and requests."""

    client_first_byte_timeout: float = Field(
        10,
        gt=0,
        description="Seconds a new connection may take to send the first byte of its "
        "first request, TLS handshake included; then it is closed (silent connections cost a "
        "descriptor each).",
    )
    keepalive_timeout: float = Field(
        75,
        gt=0,
        description="Seconds an idle keep-alive connection stays open between requests.",
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="Client connections at once (0: the descriptor limit, which fognode raises "
        "to the hard limit at start and logs, less a reserve for the upstream pool and the "
        "rest). At the cap the oldest idle one is closed to make room; if all are busy, a new "
        "one gets 503 `too_many_connections` (over TLS: it is closed).",
    )
    max_connections_per_client: int = Field(
        64,
        ge=0,
        description="Connections from one client address (an IPv6 /64) at once (0: no cap). "
        "At the cap, the same rule as `max_connections`. Behind a reverse proxy all clients "
        "share its address: raise it, or set 0.",
    )
    header_timeout: float = Field(
        30,
        gt=0,
        description="Seconds a client may take to send a request's headers (slowloris); then "
        "the connection is closed.",
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
        description="Largest request body accepted, 32 MiB by default (images in chat requests "
        "are base64); larger: 413. Model blob uploads are streamed and exempt.",
    )
