"""Find fog nodes: browse, resolve, and follow them as they come and go.

`discover(timeout)` yields each node once it is resolved (name, addresses,
port, parsed TXT); `watch()` keeps going and reports nodes appearing,
changing (new TXT: models, load) and leaving (goodbye packets or expiry).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .txt import NodeTxt

DEFAULT_TYPES = ("_https._tcp.local.", "_http._tcp.local.")
DEFAULT_INSTANCE = "SpeziLLMFog Service"


@dataclass(frozen=True)
class FogNode:
    name: str  # full service name, "SpeziLLMFog Service._https._tcp.local."
    service_type: str
    host: str  # SRV target, "spezillmfog.local."
    port: int
    addresses: tuple[str, ...]
    txt: NodeTxt

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
        """What goes in the Host header and the TLS name check."""
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


def _node_from(info: AsyncServiceInfo) -> FogNode | None:
    if info.port is None or info.server is None:
        return None
    addresses = tuple(info.parsed_scoped_addresses())
    if not addresses:
        return None
    return FogNode(
        name=info.name,
        service_type=info.type,
        host=info.server,
        port=info.port,
        addresses=addresses,
        txt=NodeTxt.from_properties(info.properties),
    )


def _looks_like_fog_node(name: str, service_type: str, instance_prefix: str | None) -> bool:
    if instance_prefix is None:
        return True
    return name[: -len(service_type) - 1].startswith(instance_prefix)


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
    azc = zeroconf or AsyncZeroconf(
        interfaces=interfaces if interfaces is not None else InterfaceChoice.All,
        ip_version=IPVersion.All,
    )
    queue: asyncio.Queue[NodeEvent] = asyncio.Queue()
    known: dict[str, FogNode] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def resolve(service_type: str, name: str, change: Change) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(azc.zeroconf, int(resolve_timeout * 1000)):
            return
        node = _node_from(info)
        if node is None:
            return
        previous = known.get(name)
        if previous == node:
            return
        known[name] = node
        queue.put_nowait(NodeEvent(Change.ADDED if previous is None else Change.UPDATED, node))

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if not _looks_like_fog_node(name, service_type, instance_prefix):
            return
        if state_change is ServiceStateChange.Removed:
            node = known.pop(name, None)
            if node is not None:
                queue.put_nowait(NodeEvent(Change.REMOVED, node))
            return
        change = Change.ADDED if state_change is ServiceStateChange.Added else Change.UPDATED
        task = asyncio.ensure_future(resolve(service_type, name, change))
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
        if own:
            await azc.async_close()


async def discover(
    # A deadline of its own: an outer asyncio.timeout cannot span an async
    # generator's yields safely.
    timeout: float = 3.0,  # noqa: ASYNC109
    *,
    service_types: Iterable[str] = DEFAULT_TYPES,
    instance_prefix: str | None = DEFAULT_INSTANCE,
    interfaces: list[str] | None = None,
) -> AsyncIterator[FogNode]:
    """Yield each fog node found within ``timeout`` seconds, as soon as it resolves."""
    events = watch(
        service_types=service_types, instance_prefix=instance_prefix, interfaces=interfaces
    )
    seen: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while (remaining := deadline - loop.time()) > 0:
            try:
                event = await asyncio.wait_for(anext(events), remaining)
            except TimeoutError:
                break
            if event.change is Change.REMOVED:
                seen.discard(event.node.name)
            elif event.node.name not in seen:
                seen.add(event.node.name)
                yield event.node
    finally:
        with contextlib.suppress(Exception):
            await events.aclose()


async def discover_all(
    timeout: float = 3.0,  # noqa: ASYNC109
    *,
    interfaces: list[str] | None = None,
) -> list[FogNode]:
    """Everything found within ``timeout`` seconds."""
    return [node async for node in discover(timeout, interfaces=interfaces)]
