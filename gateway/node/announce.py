"""Keep the node's mDNS announcement true: addresses, port, models, hot models, load.

Wiring between the gateway and discovery/: it builds the announcement from
the settings, the bound port, the CA fingerprint and the accepted
credentials, and hands the advertiser a new TXT record when the load or the
models the upstream pool found change (the advertiser rate-limits the
re-announcements). It asks no upstream anything itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, replace

from ...certs.inspect import fingerprint
from ...discovery.advertiser import Advertiser, Announcement
from ...discovery.txt import NodeTxt
from .. import __version__
from ..config.identity import host_name, node_id
from ..config.network import served_addresses
from ..config.settings import Settings
from ..pipeline.admission import Admission
from ..transport.tls import TlsTerminator
from ..upstreams.pool import UpstreamPool

log = logging.getLogger("fognode.mdns")


def announced_addresses(settings: Settings) -> list[str]:
    if settings.mdns_interfaces:
        return list(settings.mdns_interfaces)
    found = served_addresses(settings.host, include_loopback=settings.mdns_include_loopback)
    return [str(ip) for ip in found]


@dataclass(frozen=True)
class AnnounceOptions:
    refresh_interval: float  # seconds between looks at the load and the models
    min_update_interval: float  # TXT re-announced at most this often


def announcement(
    settings: Settings,
    *,
    port: int,
    ca_sha256: str,
    auth: str,
    capacity: int,
    fog_port: int = 0,
) -> Announcement:
    """What the node announces, from the settings and what the server found at start."""
    ident = node_id(settings)
    txt = NodeTxt(
        api="openai,ollama" if settings.upstream_kind == "ollama" else "openai",
        version=__version__,
        node_id=ident,
        auth=auth,
        ca_sha256=ca_sha256,
        load_capacity=capacity,
        fog_port=fog_port,
    )
    return Announcement(
        service_type=settings.service_type,
        domains=tuple(settings.mdns_domains),
        instance=settings.mdns_instance_name,
        host=host_name(settings, ident),
        port=port,
        addresses=tuple(announced_addresses(settings)),
        txt=txt,
    )


class NodeAnnouncer:
    """Keeps the TXT record true: the models the pool found (and which of them
    are loaded), the admission load."""

    def __init__(
        self,
        base: Announcement,
        options: AnnounceOptions,
        *,
        admission: Admission,
        pool: UpstreamPool,
    ) -> None:
        self.options = options
        self.admission = admission
        self.pool = pool
        self._base_txt = base.txt
        self.advertiser = Advertiser(base, min_update_interval=options.min_update_interval)
        self._task: asyncio.Task[None] | None = None
        self.announced = False

    def current_txt(self) -> NodeTxt:
        models = tuple(self.pool.known_models())
        hot = tuple(self.pool.hot_models())
        return replace(
            self._base_txt,
            models=models,
            model_count=len(models),
            hot=hot,
            hot_count=len(hot),
            load_active=self.admission.active,
            load_capacity=self.admission.capacity,
            queued=self.admission.queued,
        )

    async def refresh(self) -> None:
        self.advertiser.update_txt(self.current_txt())

    async def start(self) -> bool:
        self.advertiser.announcement = replace(self.advertiser.announcement, txt=self.current_txt())
        ok = await self.advertiser.start()
        self.announced = ok
        if ok:
            self.pool.on_probed.append(self.refresh)
            self._task = asyncio.create_task(self._loop(), name="fognode-mdns-refresh")
        return ok

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.refresh_interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("mDNS refresh failed")

    async def follow_drain(self, draining: bool) -> None:
        """A draining node withdraws its announcement (goodbye packets: phones
        and browsers drop it at once); announced again when it stops draining."""
        if draining:
            await self.stop()
            log.info("draining: withdrew the mDNS announcement")
        elif self._task is None:
            await self.start()
            log.info("no longer draining: announced again")

    async def stop(self) -> None:
        if self.refresh in self.pool.on_probed:
            self.pool.on_probed.remove(self.refresh)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.advertiser.stop()


def node_announcer(
    settings: Settings,
    *,
    port: int,
    tls: TlsTerminator | None,
    auth: str,
    admission: Admission,
    pool: UpstreamPool,
    peer_port: int | None = None,
) -> NodeAnnouncer:
    """The node's one mDNS announcement, kept true by the node's admission and
    pool; ``peer_port``: where members of its fog find it (TXT ``fog``)."""
    ca = fingerprint(tls.pair.ca, colons=False) if tls is not None and tls.pair else ""
    base = announcement(
        settings,
        port=port,
        ca_sha256=ca,
        auth=auth,
        capacity=admission.capacity,
        fog_port=peer_port or 0,
    )
    return NodeAnnouncer(
        base,
        AnnounceOptions(settings.mdns_refresh_interval, settings.mdns_min_update_interval),
        admission=admission,
        pool=pool,
    )
