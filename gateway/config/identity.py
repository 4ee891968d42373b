"""Who this node is: an id that survives restarts and differs between nodes."""

from __future__ import annotations

import logging
import uuid

from .paths import data_dir
from .settings import Settings

log = logging.getLogger("fognode.gateway")


def node_id(settings: Settings) -> str:
    """Stable across restarts and unique per node: made once, kept in the data dir.

    If the data dir cannot be written, a random id for this run is better
    than one derived from the host: nodes copied from one image must differ.
    """
    if settings.node_id:
        return settings.node_id
    path = data_dir() / "node-id"
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    except OSError as exc:
        log.warning("cannot read the node id from %s (%s); using a new one", path, exc)
        return uuid.uuid4().hex[:16]
    if existing:
        return existing
    new = uuid.uuid4().hex[:16]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new + "\n")
    except OSError as exc:
        log.warning("cannot keep the node id in %s (%s); it changes at restart", path, exc)
    return new


def host_name(settings: Settings, ident: str) -> str:
    """This node's own mDNS host name: configured, or made from its id. Its
    certificate carries it (without the final dot): the one name that
    resolves to the node on the LAN whatever address DHCP gave it."""
    return settings.mdns_host_name or id_host_name(ident)


def id_host_name(ident: str) -> str:
    return f"fognode-{ident[:8].lower()}.local."
