"""mDNS: the DNS-SD announcement that SpeziLLMFog apps browse for.

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    BaseModel,
    Field,
    field_validator,
)
from pydantic_settings import NoDecode

from ....discovery.names import DEFAULT_INSTANCE

_SERVICE_TYPE = re.compile(
    r"_[A-Za-z0-9](?:[A-Za-z0-9-]{0,13}[A-Za-z0-9])?\._(?:tcp|udp)(?:\.[^.\s]+)*", re.ASCII
)
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)


def mdns_domain(value: str) -> str:
    """A DNS-SD domain reachable by multicast: it must end in `local`."""
    name = value.strip().rstrip(".").lower()
    labels = name.split(".")
    if labels[-1] != "local" or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{value!r} is not an mDNS domain: mDNS answers only names under `local.` "
            "(such as `local.` or `spezillmfog.local.`)"
        )
    return f"{name}."


class MdnsSettings(BaseModel):
    """mDNS: the DNS-SD announcement that SpeziLLMFog apps browse for."""

    app_host_name: str = Field(
        "spezillmfog.local",
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$",
        description="The host name SpeziLLMFog apps are configured with "
        "(`LLMFogPlatformConfiguration.host`): they browse the DNS-SD domain `<name>.`, send it "
        "as `Host` and check the server certificate for it (the node warns at start if its "
        "certificate lacks it).",
    )
    mdns: bool = Field(True, description="Announce the node on the LAN with mDNS.")
    mdns_service_type: str | None = Field(
        None,
        description="DNS-SD service type, without a domain. Default `_https._tcp` with TLS, "
        "`_http._tcp` without (what SpeziLLMFog apps browse for). A domain given here "
        "(`_https._tcp.spezillmfog.local.`) is added to `mdns_domains`. A malformed type is "
        "a start-up error.",
    )
    mdns_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="DNS-SD domains to register the service in (comma-separated; each must "
        "end in `local.`). Default: `local.` (generic tools) and `<app_host_name>.` (where "
        "SpeziLLMFog apps browse).",
    )
    mdns_instance_name: str = Field(
        DEFAULT_INSTANCE,
        min_length=1,
        max_length=63,
        description="Service instance name clients browse for. On a name clash the second "
        "node becomes `<name>-2`, in every domain.",
    )
    mdns_host_name: str | None = Field(
        None,
        description="This node's own host name in the SRV records, with its A/AAAA records. "
        "Default `fognode-<first 8 characters of the node id>.local.`. Each node needs its own: "
        "a shared name makes every service resolve to every node.",
    )
    mdns_interfaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses to announce and answer on (comma-separated). Default: every "
        "non-loopback IPv4/IPv6 address of the machine (or the bound address).",
    )
    mdns_include_loopback: bool = Field(
        False, description="Also announce loopback addresses (for tests on one machine)."
    )
    mdns_refresh_interval: float = Field(
        10, gt=0, description="Seconds between checks of the model list and load for TXT."
    )
    mdns_min_update_interval: float = Field(
        5, ge=0, description="Re-announce a changed TXT record at most this often."
    )
    node_id: str | None = Field(
        None,
        description="Stable id in TXT `id`. Default: made once and kept in `<data dir>/node-id`.",
    )

    @field_validator("mdns_service_type")
    @classmethod
    def _service_type_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip().rstrip(".")
        if not _SERVICE_TYPE.fullmatch(text):
            raise ValueError(
                f"{value!r} is not a DNS-SD service type: expected `_name._tcp` or `_name._udp` "
                "(a name of at most 15 letters, digits or hyphens), optionally followed by a "
                "domain such as `.local.`"
            )
        return text

    @field_validator("mdns_domains")
    @classmethod
    def _domains_shape(cls, value: list[str]) -> list[str]:
        return [mdns_domain(d) for d in value]

    @field_validator("mdns_host_name")
    @classmethod
    def _host_name_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.strip().rstrip(".")
        if name.lower().endswith(".local"):
            name = name[: -len(".local")]
        if not _HOST_LABEL.fullmatch(name):
            raise ValueError(
                f"{value!r} is not a host name for mDNS: one label of letters, digits and "
                "hyphens, optionally followed by `.local`"
            )
        return f"{name}.local."
