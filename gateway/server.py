"""Run the app: bind, serve until told to stop, drain, exit.

Handler cancellation is on: when a client disconnects, aiohttp cancels the
handler task at once instead of waiting for the next write to fail, which is
what lets the relay close the upstream connection and stop Ollama
generating for nobody.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from ..certs.inspect import fingerprint
from ..certs.issuer import cert_names
from ..web.onboarding import OnboardingSite
from .access import AUTHORIZER, Authorizer
from .admission import ADMISSION
from .announce import AnnounceOptions, NodeAnnouncer, announcement
from .app import create_app, terminator, upstream_connections
from .connections import connection_limits
from .metrics import METRICS
from .network import bind_host, is_wildcard, local_url
from .onboarding import start_onboarding_page
from .proxy import UPSTREAM
from .settings import Settings
from .slow_clients import GuardedAppRunner
from .status import LISTENING
from .tls import TlsTerminator
from .upstream_choice import choose_upstream, install_upstream_choice

log = logging.getLogger("fognode.server")


@dataclass
class RunningServer:
    runner: web.AppRunner
    host: str
    port: int
    tls: TlsTerminator | None = None
    announcer: NodeAnnouncer | None = None
    onboarding: OnboardingSite | None = None  # the phone onboarding page, if it serves

    @property
    def app(self) -> web.Application:
        return self.runner.app

    @property
    def upstream_base(self) -> str:
        return self.app[UPSTREAM].base

    @property
    def url(self) -> str:
        return local_url(self.host, self.port, tls=self.tls is not None)

    async def stop(self) -> None:
        # Goodbye on mDNS first, so clients stop picking this node while it drains.
        if self.announcer is not None:
            await self.announcer.stop()
        if self.onboarding is not None:
            await self.onboarding.stop()
        await self.runner.cleanup()


async def start_server(
    settings: Settings, *, authorizer: Authorizer | None = None
) -> RunningServer:
    tls = terminator(settings) if settings.tls else None
    if tls is not None:
        # Refuse to start with a pair no client would accept (CertError).
        await asyncio.to_thread(tls.load)
    choice = await choose_upstream(settings)
    settings = choice.settings  # with the upstream kind decided
    app = create_app(settings, authorizer=authorizer, tls=tls)
    install_upstream_choice(app, choice)
    upstreams = max(1, len(settings.upstream_urls))
    runner = GuardedAppRunner(
        app,
        header_timeout=settings.header_timeout,
        limits=connection_limits(
            max_connections=settings.max_connections,
            max_per_client=settings.max_connections_per_client,
            first_byte_timeout=settings.client_first_byte_timeout,
            upstream_descriptors=upstreams * upstream_connections(settings),
        ),
        keepalive_timeout=settings.keepalive_timeout,
        handler_cancellation=True,
        access_log=None,  # request_context logs every request, cancelled ones too
        shutdown_timeout=settings.shutdown_timeout,
    )
    await runner.setup()
    assert runner.guard is not None
    app[METRICS].watch_connections(runner.guard)
    site = runner.site(
        # "*" (or empty): every interface, IPv4 and IPv6 (a "::" socket alone
        # would be IPv6-only under asyncio).
        bind_host(settings.host),
        settings.bind_port,
        reuse_address=True,
        ssl_context=tls.listening if tls else None,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = int(runner.addresses[0][1]) if runner.addresses else settings.bind_port
    running = RunningServer(runner, settings.host, port, tls)
    if settings.onboarding_enabled:
        try:
            running.onboarding = await start_onboarding_page(settings, tls, runner.guard)
        except BaseException:
            await running.stop()
            raise
    listening = app.get(LISTENING)
    if listening is not None:  # what the status page shows
        where = "every interface" if is_wildcard(settings.host) else settings.host
        listening.url = f"{where}, port {port} ({'HTTPS' if tls else 'plain HTTP'})"
        listening.connections = runner.guard
        listening.onboarding_url = running.onboarding.url if running.onboarding else None
    if settings.mdns:
        ca = fingerprint(tls.pair.ca, colons=False) if tls is not None and tls.pair else ""
        base = announcement(
            settings,
            port=port,
            ca_sha256=ca,
            auth=app[AUTHORIZER].kinds,
            capacity=app[ADMISSION].capacity,
        )
        running.announcer = NodeAnnouncer(
            base,
            AnnounceOptions(settings.mdns_refresh_interval, settings.mdns_min_update_interval),
            admission=app[ADMISSION],
            pool=app[UPSTREAM],
        )
        await running.announcer.start()
        if choice.runtime is not None:  # announce the model as soon as it serves
            choice.runtime.on_ready.append(running.announcer.refresh)
    return running


async def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM, then let open requests finish (bounded)."""
    running = await start_server(settings)
    log.info("fognode listening on %s, forwarding to %s", running.url, running.upstream_base)
    if running.tls is not None and running.tls.pair is not None:
        leaf = running.tls.pair.leaf
        names = cert_names(leaf).dns
        log.info(
            "TLS certificate for %s valid until %s (CA %s)",
            ", ".join(names),
            leaf.not_valid_after_utc.isoformat(),
            running.tls.ca_file,
        )
        if settings.app_host_name.rstrip(".").lower() not in names:
            log.warning(
                "the certificate does not carry %s, the name SpeziLLMFog apps check "
                "(FOGNODE_APP_HOST_NAME): they will refuse it; issue one that does with "
                "`fognode certs issue`",
                settings.app_host_name,
            )
    else:
        log.warning("TLS is off: serving plain HTTP (development only)")
    app_port = 443 if settings.tls else 80
    announced = running.announcer is not None and running.announcer.announced
    if announced and running.port != app_port:
        log.warning(
            "announcing port %d, but SpeziLLMFog apps ignore the announced port and connect "
            "to %d: they will not reach this node. Serve on %d without root with "
            "`sudo .venv/bin/fognode service install` (see the README, Port 443).",
            running.port,
            app_port,
            app_port,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down; open requests get %ss to finish", settings.shutdown_timeout)
        await running.stop()
