"""Find fog nodes: browse, resolve, and follow them as they come and go.

`discover(timeout)` yields each node once it is resolved (name, addresses,
port, parsed TXT); `watch()` keeps going and reports nodes appearing,
changing (new TXT: models, load) and leaving (goodbye packets or expiry).

Nodes announce in two DNS-SD domains, `local.` (where generic tools look)
and `spezillmfog.local.` (where the SpeziLLMFog app looks); both are browsed
and a node found in both is reported once, with the domains it is in.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass, replace
from typing import Any

import ifaddr
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf

# Exported by zeroconf (not in its __all__, which mypy goes by).
from zeroconf._services.info import AddressResolver
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .interfaces import mdns_addresses
from .names import DEFAULT_INSTANCE, DEFAULT_TYPES, SERVICE_NAME
from .txt import NodeTxt

__all__ = ["DEFAULT_INSTANCE", "DEFAULT_TYPES", "SERVICE_NAME"]


def lan_zeroconf(interfaces: list[str] | None = None) -> AsyncZeroconf:
    """mDNS on the given interfaces' addresses, or on every address of the
    machine but IPv6 loopback.

    zeroconf's ``InterfaceChoice.All`` joins the IPv6 group on ``::1`` too,
    where no IPv6 multicast can be sent: every node and every ``fognode
    discover`` then logged a WARNING with an OSError ("Network is
    unreachable") at start, which reads like a failure and is none. IPv4
    loopback stays, as zeroconf takes it (nodes on one machine see each other).
    """
    if interfaces is not None:
        return AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.All)
    chosen = mdns_addresses(ifaddr.get_adapters())
    if chosen is None:
        return AsyncZeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.All)
    return AsyncZeroconf(interfaces=chosen[0], ip_version=chosen[1])


@dataclass(frozen=True)
class FogNode:
    name: str  # full service name, "SpeziLLMFog Service._https._tcp.local."
    service_type: str  # "_https._tcp.local."
    host: str  # SRV target, the node's own host name: "fognode-1a2b3c4d.local."
    port: int
    addresses: tuple[str, ...]
    txt: NodeTxt
    domains: tuple[str, ...] = ()  # every DNS-SD domain the node was found in

    @property
    def identity(self) -> tuple[object, ...]:
        """What makes two announcements one node: its TXT id and its own host
        name (a node announces every domain from one host; another host with
        the same id is another machine, a clone or a copy of its TXT), or else
        its name, kind and addresses (nodes that announce no id, such as the
        reference's)."""
        if self.txt.node_id:
            return (self.txt.node_id, self.tls, self.host.lower())
        return (self.instance, self.tls, frozenset(self.addresses))

    @property
    def content(self) -> tuple[object, ...]:
        """What the node says about itself. Not which of its announcements was
        seen, nor in which domains: to a person watching, a node found in a
        second domain a moment after the first has not changed."""
        return (self.host, self.port, frozenset(self.addresses), self.txt)

    @property
    def domain(self) -> str:
        return self.service_type.split("._tcp.", 1)[-1].split("._udp.", 1)[-1]

    @property
    def instance(self) -> str:
        return (
            self.name[: -len(self.service_type) - 1]
            if self.name.endswith(self.service_type)
            else self.name
        )

    @property
    def tls(self) -> bool:
        return self.service_type.startswith("_https.")

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def host_name(self) -> str:
        """The SRV target, without its final dot."""
        return self.host.rstrip(".")

    def preferred_address(self) -> str:
        """IPv4 first (what phones on a home LAN route most reliably)."""
        ordered = sorted(self.addresses, key=lambda a: ipaddress.ip_address(a).version)
        return ordered[0]

    def url(self, address: str | None = None) -> str:
        ip = address or self.preferred_address()
        host = f"[{ip}]" if ":" in ip else ip
        return f"{self.scheme}://{host}:{self.port}"


class Change(enum.Enum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True)
class NodeEvent:
    change: Change
    node: FogNode


class Changes:
    """What is worth telling a person who watches: a node appearing, leaving,
    or saying something new (TXT, addresses, port), not the same node seen
    again in its other domain (watch() reports that too: discover_all keeps
    the domains)."""

    def __init__(self) -> None:
        self._said: dict[tuple[object, ...], tuple[object, ...]] = {}

    def worth_telling(self, event: NodeEvent) -> bool:
        identity = event.node.identity
        if event.change is Change.REMOVED:
            self._said.pop(identity, None)
            return True
        if self._said.get(identity) == event.node.content:
            return False
        self._said[identity] = event.node.content
        return True


def _node_from(info: AsyncServiceInfo) -> FogNode | None:
    if info.port is None or info.server is None:
        return None
    addresses = tuple(info.parsed_scoped_addresses())
    if not addresses:
        return None
    node = FogNode(
        name=info.name,
        service_type=info.type,
        host=info.server,
        port=info.port,
        addresses=addresses,
        txt=NodeTxt.from_properties(info.properties),
    )
    return replace(node, domains=(node.domain,))


def _looks_like_fog_node(name: str, service_type: str, instance_prefix: str | None) -> bool:
    if instance_prefix is None:
        return True
    return name[: -len(service_type) - 1].startswith(instance_prefix)


class _Groups:
    """Announcements of one node in several domains, reported as one node."""

    def __init__(self) -> None:
        self._by_name: dict[str, FogNode] = {}

    def _merged(self, identity: tuple[object, ...]) -> FogNode | None:
        members = [n for n in self._by_name.values() if n.identity == identity]
        if not members:
            return None
        # Show the generic `local.` announcement when there is one.
        ordered = sorted(members, key=lambda n: (n.domain != "local.", n.name))
        domains = tuple(sorted({n.domain for n in members}, key=lambda d: (d != "local.", d)))
        # Every address any of them gives: one node's announcements give the
        # same ones, and a host that copies a node's TXT (its id) must not hide
        # the node's own addresses behind its own.
        addresses = tuple(dict.fromkeys(a for n in ordered for a in n.addresses))
        return replace(ordered[0], domains=domains, addresses=addresses)

    def _apply(self, name: str, node: FogNode | None) -> list[NodeEvent]:
        """Set (or with None, drop) one announcement; what changed for the nodes."""
        old = self._by_name.get(name)
        identities = {n.identity for n in (old, node) if n is not None}
        before = {i: self._merged(i) for i in identities}
        if node is None:
            self._by_name.pop(name, None)
        else:
            self._by_name[name] = node
        events = []
        for identity in identities:
            was, now = before[identity], self._merged(identity)
            if was is None and now is not None:
                events.append(NodeEvent(Change.ADDED, now))
            elif was is not None and now is None:
                events.append(NodeEvent(Change.REMOVED, was))
            elif now is not None and now != was:
                events.append(NodeEvent(Change.UPDATED, now))
        return events

    def put(self, node: FogNode) -> list[NodeEvent]:
        return self._apply(node.name, node)

    def remove(self, name: str) -> list[NodeEvent]:
        return self._apply(name, None)


async def watch(
    *,
    service_types: Iterable[str] = DEFAULT_TYPES,
    instance_prefix: str | None = DEFAULT_INSTANCE,
    interfaces: list[str] | None = None,
    resolve_timeout: float = 3.0,
    zeroconf: AsyncZeroconf | None = None,
) -> AsyncGenerator[NodeEvent, None]:
    """Report fog nodes appearing, changing and leaving until the caller stops.

    ``instance_prefix`` keeps other `_https._tcp` services on the LAN (printers,
    NAS web UIs) out; None accepts every service of the types.
    """
    own = zeroconf is None
    azc = zeroconf or lan_zeroconf(interfaces)
    queue: asyncio.Queue[NodeEvent] = asyncio.Queue()
    groups = _Groups()
    tasks: set[asyncio.Task[None]] = set()

    async def resolve(service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(azc.zeroconf, int(resolve_timeout * 1000)):
            return
        node = _node_from(info)
        if node is None:
            return
        for event in groups.put(node):
            queue.put_nowait(event)

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if not _looks_like_fog_node(name, service_type, instance_prefix):
            return
        if state_change is ServiceStateChange.Removed:
            for event in groups.remove(name):
                queue.put_nowait(event)
            return
        task = asyncio.ensure_future(resolve(service_type, name))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    browser = AsyncServiceBrowser(azc.zeroconf, list(service_types), handlers=[on_change])
    try:
        while True:
            yield await queue.get()
    finally:
        await browser.async_cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if own:
            await azc.async_close()


async def _events_for(
    seconds: float, *, instance_prefix: str | None, interfaces: list[str] | None, **kwargs: Any
) -> AsyncIterator[NodeEvent]:
    """watch(), for ``seconds``. A deadline of its own: an outer asyncio.timeout
    cannot span an async generator's yields safely."""
    events = watch(instance_prefix=instance_prefix, interfaces=interfaces, **kwargs)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        while (remaining := deadline - loop.time()) > 0:
            try:
                yield await asyncio.wait_for(anext(events), remaining)
            except TimeoutError:
                return
    finally:
        with contextlib.suppress(Exception):
            await events.aclose()


async def discover(
    timeout: float = 3.0,  # noqa: ASYNC109
    *,
    service_types: Iterable[str] = DEFAULT_TYPES,
    instance_prefix: str | None = DEFAULT_INSTANCE,
    interfaces: list[str] | None = None,
) -> AsyncIterator[FogNode]:
    """Yield each fog node found within ``timeout`` seconds, as soon as it resolves."""
    seen: set[tuple[object, ...]] = set()
    async for event in _events_for(
        timeout, instance_prefix=instance_prefix, interfaces=interfaces, service_types=service_types
    ):
        if event.change is Change.REMOVED:
            seen.discard(event.node.identity)
        elif event.node.identity not in seen:
            seen.add(event.node.identity)
            yield event.node


async def discover_all(
    timeout: float = 3.0,  # noqa: ASYNC109
    *,
    interfaces: list[str] | None = None,
    instance_prefix: str | None = DEFAULT_INSTANCE,
) -> list[FogNode]:
    """Everything found within ``timeout`` seconds, as it stands at the end: a
    node seen in several domains is one entry that lists them all."""
    latest: dict[tuple[object, ...], FogNode] = {}
    async for event in _events_for(timeout, instance_prefix=instance_prefix, interfaces=interfaces):
        if event.change is Change.REMOVED:
            latest.pop(event.node.identity, None)
        else:
            latest[event.node.identity] = event.node
    return list(latest.values())


async def resolve_host(
    name: str, seconds: float = 3.0, *, interfaces: list[str] | None = None
) -> list[str]:
    """The addresses a `.local` host name has on the LAN, asked by mDNS (a
    node's own fognode-<id>.local, say), IPv4 first; none if nobody answers.
    Machines without an mDNS resolver in their system (nss-mdns) resolve it
    this way."""
    azc = lan_zeroconf(interfaces)
    try:
        resolver = AddressResolver(name.rstrip(".") + ".")
        if not await resolver.async_request(azc.zeroconf, int(seconds * 1000)):
            return []
        found = resolver.parsed_scoped_addresses()
    finally:
        await azc.async_close()
    return sorted(found, key=lambda a: ipaddress.ip_address(a.split("%")[0]).version)
