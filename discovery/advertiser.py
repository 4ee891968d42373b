"""Announce the node on the LAN with python-zeroconf (its asyncio API).

Registered as the reference fog node's Avahi service was: `_https._tcp`
(`_http._tcp` without TLS), instance `SpeziLLMFog Service`, host
`spezillmfog.local.`, the gateway's real port. Every node on a LAN uses the
same host name by design; clients take the addresses that come with the
service's own answer (SRV + A/AAAA), so the shared name does no harm. Two
nodes with the same *instance* name are told apart the mDNS way: the
second probes, finds the name taken and registers as `SpeziLLMFog Service-2`.

TXT updates (models, load) are re-announced when they change, but not more
often than `min_update_interval`, so a busy node does not flood the LAN.

mDNS is a convenience, never a reason to stop serving: if no interface can
multicast, the advertiser logs why and the gateway carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from .txt import NodeTxt

log = logging.getLogger("fognode.mdns")


@dataclass(frozen=True)
class Announcement:
    service_type: str  # "_https._tcp.local."
    instance: str  # "SpeziLLMFog Service"
    host: str  # "spezillmfog.local."
    port: int
    addresses: tuple[str, ...]
    txt: NodeTxt

    @property
    def full_name(self) -> str:
        return f"{self.instance}.{self.service_type}"


def fqdn(name: str) -> str:
    name = name.strip()
    if not name.endswith(".local.") and not name.endswith(".local"):
        name = f"{name}.local"
    return name if name.endswith(".") else f"{name}."


def service_type_for(tls: bool, override: str | None = None) -> str:
    if override:
        return override if override.endswith(".") else f"{override}."
    return "_https._tcp.local." if tls else "_http._tcp.local."


class Advertiser:
    def __init__(
        self,
        announcement: Announcement,
        *,
        interfaces: Iterable[str] | None = None,
        min_update_interval: float = 5.0,
        name_check_seconds: float = 1.0,
    ) -> None:
        self.announcement = announcement
        self.name_check_seconds = name_check_seconds
        self.interfaces = list(interfaces) if interfaces is not None else None
        self.min_update_interval = min_update_interval
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._last_sent = 0.0
        self._pending: asyncio.TimerHandle | None = None
        self.registered_name: str | None = None
        self.updates_sent = 0

    def _service_info(self, announcement: Announcement) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            announcement.service_type,
            self.registered_name or announcement.full_name,
            port=announcement.port,
            properties=announcement.txt.to_properties(),
            server=announcement.host,
            parsed_addresses=list(announcement.addresses),
        )

    async def start(self) -> bool:
        """Register; return False (and log) when mDNS cannot work here."""
        ann = self.announcement
        if not ann.addresses:
            log.warning("mDNS: no network address to announce; the node is not discoverable")
            return False
        has_v6 = any(":" in a for a in ann.addresses)
        has_v4 = any(":" not in a for a in ann.addresses)
        version = (
            IPVersion.All
            if has_v4 and has_v6
            else (IPVersion.V6Only if has_v6 else IPVersion.V4Only)
        )
        try:
            self._zc = AsyncZeroconf(
                interfaces=self.interfaces if self.interfaces is not None else list(ann.addresses),
                ip_version=version,
            )
            self.registered_name = await self._free_name(ann)
            self._info = self._service_info(ann)
            # The call probes and registers; the awaitable it returns completes
            # when the announcements have gone out.
            announced = await self._zc.async_register_service(self._info, allow_name_change=True)
            await announced
        except (OSError, RuntimeError) as exc:
            log.warning("mDNS: cannot announce the node (%s); serving without discovery", exc)
            await self._close_quietly()
            return False
        self.registered_name = self._info.name
        if self.registered_name != ann.full_name:
            log.warning(
                "mDNS: %r is taken on this network; announced as %r",
                ann.full_name,
                self.registered_name,
            )
        log.info(
            "mDNS: announced %r on %s port %d (%s)",
            self.registered_name,
            ", ".join(ann.addresses),
            ann.port,
            ann.service_type.rstrip("."),
        )
        self._last_sent = time.monotonic()
        return True

    async def _free_name(self, ann: Announcement) -> str:
        """Ask the LAN whether the instance name is taken, and pick `<name>-N` if so.

        zeroconf's own probe waits a few hundred milliseconds for an answer; a
        node on a busy Wi-Fi (or CPU) can answer later than that, and two nodes
        would then share a name. Asking first, with a longer wait, makes the
        clash visible; zeroconf's probe still runs after it.
        """
        assert self._zc is not None
        number = 1
        name = ann.full_name
        while number < 100:
            info = AsyncServiceInfo(ann.service_type, name)
            if not await info.async_request(self._zc.zeroconf, int(self.name_check_seconds * 1000)):
                return name
            number += 1
            name = f"{ann.instance}-{number}.{ann.service_type}"
        return name

    def update_txt(self, txt: NodeTxt) -> None:
        """Change what the TXT record says; re-announced at most every interval."""
        if txt == self.announcement.txt:
            return
        self.announcement = replace(self.announcement, txt=txt)
        if self._zc is None or self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        wait = max(0.0, self._last_sent + self.min_update_interval - time.monotonic())
        self._pending = loop.call_later(wait, lambda: asyncio.ensure_future(self._send_update()))

    async def _send_update(self) -> None:
        self._pending = None
        if self._zc is None:
            return
        self._info = self._service_info(self.announcement)
        try:
            await (await self._zc.async_update_service(self._info))
        except (OSError, RuntimeError) as exc:
            log.warning("mDNS: update failed: %s", exc)
            return
        self._last_sent = time.monotonic()
        self.updates_sent += 1
        log.debug("mDNS: TXT updated: %s", self.announcement.txt.to_properties())

    async def stop(self) -> None:
        """Unregister with goodbye packets (TTL 0) so clients drop the node at once."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._zc is None:
            return
        try:
            if self._info is not None:
                # Wait for the goodbyes to be sent, not just queued, before closing.
                await (await self._zc.async_unregister_service(self._info))
        except (OSError, RuntimeError) as exc:
            log.warning("mDNS: goodbye failed: %s", exc)
        await self._close_quietly()
        log.info("mDNS: withdrew %r", self.registered_name)

    async def _close_quietly(self) -> None:
        if self._zc is not None:
            with contextlib.suppress(OSError, RuntimeError):
                await self._zc.async_close()
            self._zc = None
