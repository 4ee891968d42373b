"""The fog: this node's peers, how it finds them and talks to them.

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field
from pydantic_settings import NoDecode

# The peer port: mutual TLS between members only. Not the phones' port (443,
# or 8443 without the capability to bind it): a phone must never be asked
# for a client certificate, and the peer port must never take a phone's
# request. A high port, so a node needs no privilege for it.
DEFAULT_FOG_PORT = 9443


class FogSettings(BaseModel):
    """The fog: this node's peers, how it finds them and talks to them (docs/fog.md)."""

    fog: bool | None = Field(
        None,
        description="Share work with the other nodes of this fog (docs/fog.md). Default: on "
        "when the node has peer credentials (`node.crt` and `node.key` in certs_dir, from "
        "`fognode certs issue --node NAME` on the CA's machine), off otherwise. `off` turns "
        "it off; `on` refuses to start without the credentials.",
    )
    fog_port: int = Field(
        DEFAULT_FOG_PORT,
        ge=0,
        le=65535,
        description="The peer port: mutual TLS, node certificates of this fog only (0 = any "
        "free). Phones never use it; announced in TXT `fog` so that members find it.",
    )
    fog_peers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Peers to ask besides those mDNS finds, for networks mDNS does not "
        "cross (VLANs, routed segments): `host`, `host:port` or `[v6]:port`, comma-separated "
        "(the port defaults to fog_port). Each is a member only if its certificate says so.",
    )
    fog_refresh_seconds: float = Field(
        1.5,
        ge=0.1,
        le=60,
        description="Seconds between state requests to each member (moved by up to a fifth "
        "at random, so members do not ask in step).",
    )
    fog_stale_seconds: float = Field(
        5.0,
        gt=0,
        description="A member whose state is older than this is not used: one that stops "
        "answering is out of placement within this bound.",
    )
    fog_margin_seconds: float = Field(
        1.0,
        ge=0,
        description="How much sooner a member must be able to start a request than this "
        "node before the request is handed to it (a hop costs a little; a tie stays here).",
    )
