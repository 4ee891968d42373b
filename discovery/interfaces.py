"""Which addresses mDNS uses, and which IP versions they make.

The announcement (advertiser.py) and the browser (browser.py) both hand
zeroconf a list of addresses and the IP version that list needs; the rule
for the version is this one, whoever made the list.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import ifaddr
from zeroconf import IPVersion


def ip_version(addresses: Iterable[str]) -> IPVersion:
    """The IP versions a list of addresses needs (an IPv6 one has a colon)."""
    listed = list(addresses)
    has_v6 = any(":" in a for a in listed)
    has_v4 = any(":" not in a for a in listed)
    return (
        IPVersion.All if has_v4 and has_v6 else (IPVersion.V6Only if has_v6 else IPVersion.V4Only)
    )


def mdns_addresses(adapters: Iterable[ifaddr.Adapter]) -> tuple[list[str], IPVersion] | None:
    """Every address of the machine but IPv6 loopback (browser.lan_zeroconf
    says why), and the IP versions they make; None when the machine lists none."""
    ips = [ip.ip for adapter in adapters for ip in adapter.ips]
    v4 = sorted({ip for ip in ips if isinstance(ip, str)})
    v6 = sorted(
        {
            ip[0]
            for ip in ips
            if isinstance(ip, tuple) and not ipaddress.ip_address(ip[0].split("%")[0]).is_loopback
        }
    )
    if not v4 and not v6:
        return None
    return [*v4, *v6], ip_version([*v4, *v6])
