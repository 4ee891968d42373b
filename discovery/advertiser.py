"""Announce the node on the LAN with python-zeroconf (its asyncio API).

One service, `_https._tcp` (`_http._tcp` without TLS), instance
`SpeziLLMFog Service`, registered in every DNS-SD domain of the
announcement:

* `local.`, where generic tools look (avahi-browse, `dns-sd -B`,
  python-zeroconf browsers, `fognode discover`);
* `spezillmfog.local.`, where the SpeziLLMFog app looks: it browses the
  domain "its configured host plus a dot", i.e. it sends PTR queries for
  `_https._tcp.spezillmfog.local.` (zeroconf's strict checks reject that
  domain, so registration runs with ``strict=False``).

Each node has a host name of its own in its SRV records (`fognode-<id>.local.`
by default), with its own A/AAAA records. Sharing one name across nodes
(every node claiming `spezillmfog.local.` with cache-flush) makes each
service resolve to every node's addresses, whichever announced last winning.
The name is checked on the LAN before it is used, and so is the instance
name in every domain; a clash gets `-2`, `-3`, ... in both.

TXT updates (models, load) are re-announced when they change, but not more
often than `min_update_interval`, so a busy node does not flood the LAN.

mDNS is a convenience, never a reason to stop serving: if no interface can
multicast, or a setting makes no sense to zeroconf, the advertiser logs why
and the gateway carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace

from zeroconf import Error as ZeroconfError
from zeroconf import (
    NonUniqueNameException,
    RecordUpdate,
    RecordUpdateListener,
    Zeroconf,
)

# Exported by zeroconf (not in its __all__, which mypy goes by).
from zeroconf._dns import DNSService
from zeroconf._services.info import AddressResolver
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from .interfaces import ip_version
from .txt import NodeTxt

log = logging.getLogger("fognode.mdns")

_MAX_SUFFIX = 100


@dataclass(frozen=True)
class Announcement:
    service_type: str  # "_https._tcp", without a domain
    domains: tuple[str, ...]  # ("local.", "spezillmfog.local.")
    instance: str  # "SpeziLLMFog Service"
    host: str  # "fognode-1a2b3c4d.local.", this node's own
    port: int
    addresses: tuple[str, ...]
    txt: NodeTxt

    def type_in(self, domain: str) -> str:
        return f"{self.service_type}.{domain}"

    def name_in(self, domain: str, instance: str | None = None) -> str:
        return f"{instance or self.instance}.{self.type_in(domain)}"


def numbered(base: str, number: int) -> str:
    """The mDNS way of renaming on a clash: `name`, `name-2`, `name-3`, ..."""
    return base if number == 1 else f"{base}-{number}"


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
        self._infos: list[AsyncServiceInfo] = []
        self._last_sent = 0.0
        self._pending: asyncio.TimerHandle | None = None
        self._update: asyncio.Task[None] | None = None
        self._guard: asyncio.Task[None] | None = None
        self.instance: str | None = None  # as registered (maybe `-2`)
        self.host: str | None = None  # as registered (maybe `-2`)

    def _infos_for(self, ann: Announcement) -> list[AsyncServiceInfo]:
        assert self.instance is not None and self.host is not None
        return [
            AsyncServiceInfo(
                ann.type_in(domain),
                ann.name_in(domain, self.instance),
                port=ann.port,
                properties=ann.txt.to_properties(),
                server=self.host,
                parsed_addresses=list(ann.addresses),
            )
            for domain in ann.domains
        ]

    async def start(self) -> bool:
        """Register; return False (and log) when mDNS cannot work here."""
        ann = self.announcement
        if not ann.addresses:
            log.info("mDNS: no network address to announce; the node is not discoverable")
            return False
        version = ip_version(ann.addresses)
        try:
            self._zc = AsyncZeroconf(
                interfaces=self.interfaces if self.interfaces is not None else list(ann.addresses),
                ip_version=version,
            )
            self.host, number = await asyncio.gather(self._free_host(ann), self._free_number(ann))
            await self._register(ann, number)
        except (OSError, RuntimeError, ZeroconfError) as exc:
            log.warning(
                "mDNS: cannot announce the node (%s: %s); serving without discovery",
                type(exc).__name__,
                exc,
            )
            await self._close_quietly()
            return False
        if self.instance != ann.instance:
            log.warning(
                "mDNS: %r is taken on this network; announced as %r", ann.instance, self.instance
            )
        if self.host != ann.host:
            log.warning("mDNS: host name %r is taken; using %r", ann.host, self.host)
        log.info(
            "mDNS: announced %r (%s in %s) at %s port %d (%s)",
            self.instance,
            ann.service_type,
            ", ".join(ann.domains),
            self.host,
            ann.port,
            ", ".join(ann.addresses),
        )
        self._last_sent = time.monotonic()
        self._guard = asyncio.create_task(self._guard_name(ann), name="fognode-mdns-guard")
        return True

    async def _guard_name(self, ann: Announcement) -> None:
        """Catch a host that takes this node's name, now or later.

        Two nodes that start together both find the name free and both
        register it (python-zeroconf does not break simultaneous probe ties);
        and a host can claim a name at any time. Every SRV record heard for
        one of this node's service names is checked: if it points at another
        host, the node with the greater host name yields and takes the next
        free number, so exactly one of the two moves.
        """
        assert self._zc is not None
        zc = self._zc
        rivals: asyncio.Queue[str] = asyncio.Queue()
        listener = _RivalListener(self, rivals)
        zc.zeroconf.async_add_listener(listener, None)
        try:
            # Ask once, a moment after the announcements: a rival answers.
            await asyncio.sleep(random.uniform(0.5, 1.5))
            await self._ask_for_own_names(ann)
            while True:
                rival = await rivals.get()
                if rival > (self.host or ""):
                    continue  # the other node yields
                log.warning("mDNS: %s also announces %r; renaming this node", rival, self.instance)
                try:
                    for info in self._infos:
                        await (await zc.async_unregister_service(info))
                    await self._register(ann, await self._free_number(ann))
                except (OSError, RuntimeError, ZeroconfError) as exc:
                    log.warning("mDNS: cannot re-announce under a new name (%s)", exc)
                    return
                log.warning("mDNS: announced as %r", self.instance)
        finally:
            zc.zeroconf.async_remove_listener(listener)

    async def _ask_for_own_names(self, ann: Announcement) -> None:
        assert self._zc is not None
        wait_ms = int(self.name_check_seconds * 1000)
        await asyncio.gather(
            *(
                AsyncServiceInfo(ann.type_in(d), ann.name_in(d, self.instance)).async_request(
                    self._zc.zeroconf, wait_ms
                )
                for d in ann.domains
            )
        )

    def own_service_keys(self) -> set[str]:
        return {info.key for info in self._infos}

    async def _register(self, ann: Announcement, number: int) -> None:
        """Register in every domain under one instance name, free in all of them.

        The domains are probed together; once registered, the node answers
        queries while its announcements go out.
        """
        assert self._zc is not None
        zc = self._zc
        while True:
            self.instance = numbered(ann.instance, number)
            infos = self._infos_for(ann)
            # Each call probes, then registers; the awaitable it returns
            # completes when the announcements have gone out.
            results = await asyncio.gather(
                *(
                    zc.async_register_service(i, allow_name_change=False, strict=False)
                    for i in infos
                ),
                return_exceptions=True,
            )
            self._infos = [
                i for i, r in zip(infos, results, strict=True) if not isinstance(r, BaseException)
            ]
            failures = [r for r in results if isinstance(r, BaseException)]
            if not failures:
                await asyncio.gather(*(r for r in results if not isinstance(r, BaseException)))
                return
            # Someone took the name while we probed: withdraw and renumber.
            for info in self._infos:
                await (await zc.async_unregister_service(info))
            self._infos = []
            if not all(isinstance(f, NonUniqueNameException) for f in failures):
                raise next(f for f in failures if not isinstance(f, NonUniqueNameException))
            number += 1
            if number > _MAX_SUFFIX:
                raise failures[0]

    async def _free_number(self, ann: Announcement) -> int:
        """The first `<name>-N` that nobody answers for, in any of the domains.

        zeroconf's own probe waits a few hundred milliseconds for an answer; a
        node on a busy Wi-Fi (or CPU) can answer later than that, and two nodes
        would then share a name. Asking first, with a longer wait, makes the
        clash visible; zeroconf's probe still runs after it.
        """
        assert self._zc is not None
        wait_ms = int(self.name_check_seconds * 1000)
        for number in range(1, _MAX_SUFFIX):
            instance = numbered(ann.instance, number)
            answers = await asyncio.gather(
                *(
                    AsyncServiceInfo(ann.type_in(d), ann.name_in(d, instance)).async_request(
                        self._zc.zeroconf, wait_ms
                    )
                    for d in ann.domains
                )
            )
            if not any(answers):
                return number
        return _MAX_SUFFIX

    async def _free_host(self, ann: Announcement) -> str:
        """The node's host name, or `<name>-N` if another host answers for it.

        Only the address records matter: a host that answers with exactly our
        addresses is this machine's previous process, not a clash.
        """
        assert self._zc is not None
        ours = {ipaddress.ip_address(a.split("%")[0]) for a in ann.addresses}
        label, _, domain = ann.host.partition(".")
        for number in range(1, _MAX_SUFFIX):
            host = f"{numbered(label, number)}.{domain}"
            resolver = AddressResolver(host)
            if not await resolver.async_request(
                self._zc.zeroconf, int(self.name_check_seconds * 1000)
            ):
                return host
            theirs = {
                ipaddress.ip_address(a.split("%")[0]) for a in resolver.parsed_scoped_addresses()
            }
            if theirs <= ours:
                return host
        raise NonUniqueNameException(f"no free host name like {ann.host}")

    def update_txt(self, txt: NodeTxt) -> None:
        """Change what the TXT record says; re-announced at most every interval."""
        if txt == self.announcement.txt:
            return
        self.announcement = replace(self.announcement, txt=txt)
        if self._zc is None or self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        wait = max(0.0, self._last_sent + self.min_update_interval - time.monotonic())
        self._pending = loop.call_later(wait, self._start_update)

    def _start_update(self) -> None:
        self._pending = None
        if self._update is None or self._update.done():
            self._update = asyncio.create_task(self._send_update(), name="fognode-mdns-update")

    async def _send_update(self) -> None:
        if self._zc is None:
            return
        infos = self._infos_for(self.announcement)
        try:
            for info in infos:
                await (await self._zc.async_update_service(info))
        except (OSError, RuntimeError, ZeroconfError) as exc:
            log.warning("mDNS: update failed: %s", exc)
            return
        self._infos = infos
        self._last_sent = time.monotonic()
        log.debug("mDNS: TXT updated: %s", self.announcement.txt.to_properties())

    async def stop(self) -> None:
        """Unregister with goodbye packets (TTL 0) so clients drop the node at once."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        for task in (self._update, self._guard):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._update = self._guard = None
        if self._zc is None:
            return
        try:
            # Wait for the goodbyes to be sent, not just queued, before closing.
            goodbyes = [await self._zc.async_unregister_service(i) for i in self._infos]
            await asyncio.gather(*goodbyes)
        except (OSError, RuntimeError, ZeroconfError) as exc:
            log.warning("mDNS: goodbye failed: %s", exc)
        await self._close_quietly()
        log.info("mDNS: withdrew %r", self.instance)

    async def _close_quietly(self) -> None:
        if self._zc is not None:
            with contextlib.suppress(OSError, RuntimeError, ZeroconfError):
                await self._zc.async_close()
            self._zc = None


class _RivalListener(RecordUpdateListener):
    """Hears every record zeroconf receives; reports SRV records for this node's
    service names that point at another host."""

    def __init__(self, advertiser: Advertiser, rivals: asyncio.Queue[str]) -> None:
        self.advertiser = advertiser
        self.rivals = rivals

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        keys = self.advertiser.own_service_keys()
        host = (self.advertiser.host or "").lower()
        for update in records:
            record = update.new
            if (
                isinstance(record, DNSService)
                and record.key in keys
                and record.ttl > 0
                and record.server_key != host
            ):
                self.rivals.put_nowait(record.server_key)
