"""Keep the node's mDNS announcement true: addresses, port, models, load.

Wiring between the gateway and discovery/: it reads the settings, the
bound port, the CA fingerprint and the live counters, asks Ollama for its
model list now and then, and hands the advertiser a new TXT record when
something changed (the advertiser rate-limits the re-announcements).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import uuid
from dataclasses import replace

import aiohttp

from ..certs.inspect import fingerprint
from ..certs.issuer import lan_addresses
from ..discovery.advertiser import Advertiser, Announcement
from ..discovery.txt import NodeTxt
from . import __version__
from .limits import Admission
from .settings import Settings, data_dir
from .tls import TlsTerminator
from .upstream import ModelSource

log = logging.getLogger("fognode.mdns")


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
    """This node's own mDNS host name: configured, or made from its id."""
    return settings.mdns_host_name or f"fognode-{ident[:8].lower()}.local."


def announced_addresses(settings: Settings) -> list[str]:
    if settings.mdns_interfaces:
        return list(settings.mdns_interfaces)
    bound = settings.host
    if bound not in ("0.0.0.0", "::", "", "*"):
        try:
            ip = ipaddress.ip_address(bound)
        except ValueError:
            return []
        if ip.is_loopback and not settings.mdns_include_loopback:
            return []
        return [str(ip)]
    found = [str(ip) for ip in lan_addresses(include_loopback=settings.mdns_include_loopback)]
    if bound == "0.0.0.0":  # IPv4 only
        found = [a for a in found if ":" not in a]
    elif bound == "::":  # IPv6 only
        found = [a for a in found if ":" in a]
    return found


def auth_kind(settings: Settings) -> str:
    if settings.auth == "none":
        return "none"
    kinds = []
    if settings.firebase_project_id or settings.firebase_auth_emulator_host:
        kinds.append("firebase")
    if settings.api_keys or settings.api_keys_file:
        kinds.append("apikey")
    return "+".join(kinds) or "firebase"


class NodeAnnouncer:
    def __init__(
        self,
        settings: Settings,
        *,
        port: int,
        admission: Admission,
        upstream: ModelSource,
        tls: TlsTerminator | None,
    ) -> None:
        self.settings = settings
        self.admission = admission
        self.upstream = upstream
        self.tls = tls
        self.models: tuple[str, ...] = ()
        ca = ""
        if tls is not None and tls.pair is not None:
            ca = fingerprint(tls.pair.ca, colons=False)
        ident = node_id(settings)
        self._base_txt = NodeTxt(
            api="openai,ollama" if settings.upstream_kind == "ollama" else "openai",
            version=__version__,
            node_id=ident,
            auth=auth_kind(settings),
            ca_sha256=ca,
            load_capacity=admission.capacity,
        )
        self.advertiser = Advertiser(
            Announcement(
                service_type=settings.service_type,
                domains=tuple(settings.mdns_domains),
                instance=settings.mdns_instance_name,
                host=host_name(settings, ident),
                port=port,
                addresses=tuple(announced_addresses(settings)),
                txt=self._base_txt,
            ),
            min_update_interval=settings.mdns_min_update_interval,
        )
        self._task: asyncio.Task[None] | None = None
        self.announced = False

    def current_txt(self) -> NodeTxt:
        return NodeTxt(
            api=self._base_txt.api,
            version=self._base_txt.version,
            node_id=self._base_txt.node_id,
            auth=self._base_txt.auth,
            ca_sha256=self._base_txt.ca_sha256,
            models=self.models,
            model_count=len(self.models),
            load_active=self.admission.active,
            load_capacity=self.admission.capacity,
            queued=self.admission.queued,
        )

    async def fetch_models(self) -> tuple[str, ...] | None:
        try:
            async with asyncio.timeout(self.settings.readiness_timeout):
                return tuple(await self.upstream.model_names())
        except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError):
            return None

    async def refresh(self) -> None:
        models = await self.fetch_models()
        if models is not None:
            self.models = models
        self.advertiser.update_txt(self.current_txt())

    async def start(self) -> bool:
        models = await self.fetch_models()
        if models is not None:
            self.models = models
        self.advertiser.announcement = replace(self.advertiser.announcement, txt=self.current_txt())
        ok = await self.advertiser.start()
        self.announced = ok
        if ok:
            self._task = asyncio.create_task(self._loop(), name="fognode-mdns-refresh")
        return ok

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.mdns_refresh_interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("mDNS refresh failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.advertiser.stop()
