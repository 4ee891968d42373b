"""This machine on the network: its addresses, and what a bind address means.

Neutral ground for the parts that need it (certificate names, mDNS
announcements, the onboarding page's link, the CLI's local URL): certs/ and
discovery/ do not import each other, so the gateway asks here and passes
the answers on.
"""

from __future__ import annotations

import ipaddress

import ifaddr

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Bind addresses that mean "every interface" (asyncio's None) and what each
# covers: `*` and "" both families, `0.0.0.0` IPv4 only, `::` IPv6 only.
_WILDCARDS = {"*": None, "": None, "0.0.0.0": 4, "::": 6}


def is_wildcard(host: str) -> bool:
    return host in _WILDCARDS


def bind_host(host: str) -> str | None:
    """What asyncio binds for the setting: None (every interface, both families) for
    `*`, since a `::` socket alone would be IPv6-only."""
    return None if host in ("*", "") else host


def wildcard_family(host: str) -> int | None:
    """4 or 6 for a one-family wildcard, None for both (or for a single address)."""
    return _WILDCARDS.get(host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_url(host: str, port: int, *, tls: bool) -> str:
    """The URL at which this machine reaches a server bound to ``host``."""
    return address_url("127.0.0.1" if is_wildcard(host) else host, port, tls=tls)


def address_url(address: str, port: int, *, tls: bool) -> str:
    shown = f"[{address}]" if ":" in address else address
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def served_addresses(host: str, *, include_loopback: bool = False) -> list[IPAddress]:
    """The addresses a server bound to ``host`` is reached at from elsewhere:
    this machine's LAN addresses (of the family) for a wildcard, the address
    itself otherwise; none for loopback (unless ``include_loopback``) or a
    name."""
    if not is_wildcard(host):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return []
        return [] if ip.is_loopback and not include_loopback else [ip]
    family = wildcard_family(host)
    return [
        ip
        for ip in lan_addresses(include_loopback=include_loopback)
        if family is None or ip.version == family
    ]


def served_urls(host: str, port: int, *, tls: bool) -> list[str]:
    return [address_url(str(ip), port, tls=tls) for ip in served_addresses(host)]


def lan_addresses(*, include_loopback: bool = False) -> list[IPAddress]:
    """This machine's unicast addresses, IPv4 and IPv6, without link-local ones
    (a client on another link could not use them without a scope id)."""
    found: list[IPAddress] = []
    for adapter in ifaddr.get_adapters():
        for entry in adapter.ips:
            raw = entry.ip if isinstance(entry.ip, str) else entry.ip[0]
            try:
                ip = ipaddress.ip_address(raw.split("%")[0])
            except ValueError:
                continue
            if ip.is_link_local or ip.is_multicast or ip.is_unspecified:
                continue
            if ip.is_loopback and not include_loopback:
                continue
            if ip not in found:
                found.append(ip)
    return found
