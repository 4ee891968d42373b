"""Listening: where the node listens, and how many processes serve it.

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    Field,
)


class ListeningSettings(BaseModel):
    """Listening: where the node listens, and how many processes serve it."""

    host: str = Field(
        "127.0.0.1",
        description="Address to bind. `*` serves the LAN on every interface, IPv4 and IPv6 "
        "(`0.0.0.0`: IPv4 only). Only a non-loopback bind is announced on mDNS.",
    )
    port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="TCP port to listen on (0 = any free). Default 8443 with TLS, 8080 without. "
        "SpeziLLMFog apps connect to 443 (80 without TLS) whatever is announced, and a node "
        "that announces another port logs a warning (docs/deployment.md, port 443).",
    )
    workers: int = Field(
        0,
        ge=0,
        le=1024,
        description="Processes that serve requests, sharing the port (0: one per core; 1: "
        "everything in one process). The node behaves as one whatever the number: admission, "
        "quotas and usage records, conversation affinity, upstream checks, metrics, the status "
        "page, mDNS, certificate renewal and the onboarding page are the node's "
        "(docs/workers.md).",
    )

    @property
    def bind_port(self) -> int:
        assert self.port is not None  # filled in by _default_port
        return self.port
