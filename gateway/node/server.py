"""Run the app: bind, serve until told to stop, drain, exit.

One process serves it all here (:func:`start_server`); with worker
processes (supervisor.py), each worker runs the app with :func:`run_app`,
like the single process does. serve.py picks between the two.

Handler cancellation is on: when a client disconnects, aiohttp cancels the
handler task at once instead of waiting for the next write to fail, which is
what lets the relay close the upstream connection and stop Ollama
generating for nobody.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from dataclasses import dataclass

from aiohttp import web

from ...certs.constraints import is_constrained
from ...certs.inspect import fingerprint
from ...certs.issuer import cert_names
from ...web.onboarding import OnboardingSite
from ..app import create_app
from ..config.identity import node_id
from ..config.network import bind_host, is_wildcard, local_url
from ..config.settings import Settings
from ..core.drain import DRAIN
from ..options import membership_options, peer_tls, terminator, upstream_connections
from ..pages.onboarding import start_onboarding_page
from ..pages.status import LISTENING
from ..pipeline.access import AUTHORIZER, Authorizer
from ..pipeline.admission import ADMISSION, Admission
from ..telemetry.metrics import METRICS
from ..transport.connections import connection_limits
from ..transport.slow_clients import GuardedAppRunner
from ..transport.tls import TlsTerminator
from ..upstreams.choice import choose_upstream, install_upstream_choice
from ..upstreams.peers import FOG
from ..upstreams.pool import UPSTREAM, UpstreamPool
from .announce import AnnounceOptions, NodeAnnouncer, announcement
from .fog import FogMembership

log = logging.getLogger("fognode.server")


@dataclass
class RunningServer:
    runner: web.AppRunner
    host: str
    port: int
    tls: TlsTerminator | None = None
    announcer: NodeAnnouncer | None = None
    onboarding: OnboardingSite | None = None  # the phone onboarding page, if it serves
    peer_port: int | None = None  # the fog's peer port, when the node is a member
    membership: FogMembership | None = None  # the node's membership service (one process)

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
        if self.membership is not None:
            await self.membership.stop()
        if self.onboarding is not None:
            await self.onboarding.stop()
        await self.runner.cleanup()


async def start_server(
    settings: Settings, *, authorizer: Authorizer | None = None
) -> RunningServer:
    """Everything in this process (``workers`` = 1, and the tests): the upstream
    choice, the app, the listening socket, the mDNS announcement."""
    tls = terminator(settings) if settings.tls else None
    if tls is not None:
        # Refuse to start with a pair no client would accept (CertError).
        await asyncio.to_thread(tls.load)
    # The node id, once (the fog's messages name the node by it).
    settings = settings.model_copy(update={"node_id": await asyncio.to_thread(node_id, settings)})
    peers = await asyncio.to_thread(peer_tls, settings)  # None: not a member of a fog
    choice = await choose_upstream(settings)
    settings = choice.settings  # with the upstream kind decided
    app = create_app(settings, authorizer=authorizer, tls=tls, peers=peers)
    install_upstream_choice(app, choice)
    running = await run_app(app, settings, tls)
    try:
        fog = app.get(FOG)
        if fog is not None and running.peer_port is not None:
            running.membership = FogMembership(
                membership_options(settings, port=running.peer_port), fog.tls, fog.follow
            )
            fog.on_failure = running.membership.report_failure
            await running.membership.start()
        if settings.mdns:
            admission = app[ADMISSION]
            assert isinstance(admission, Admission)  # held here, in a single process
            running.announcer = node_announcer(
                settings,
                port=running.port,
                tls=tls,
                auth=app[AUTHORIZER].kinds,
                admission=admission,
                pool=app[UPSTREAM],
                peer_port=running.peer_port,
            )
            await running.announcer.start()
            if choice.runtime is not None:  # announce the model as soon as it serves
                choice.runtime.on_ready.append(running.announcer.refresh)
            app[DRAIN].on_change.append(running.announcer.follow_drain)
    except BaseException:
        await running.stop()
        raise
    return running


async def run_app(
    app: web.Application,
    settings: Settings,
    tls: TlsTerminator | None,
    *,
    sockets: list[socket.socket] | None = None,
    peer_sockets: list[socket.socket] | None = None,
    onboarding: bool = True,
) -> RunningServer:
    """Serve ``app`` on guarded connections: on the host and port of the
    settings, or on ``sockets`` bound already (a worker's share of the port);
    in a fog also on the peer port (``peer_sockets``: a worker's share).
    ``onboarding``: also the phone onboarding page when the settings want it
    (a worker does not: its supervisor serves the one page, on its own port)."""
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
    context = tls.listening if tls else None
    # "*" (or empty): every interface, IPv4 and IPv6 (a "::" socket alone
    # would be IPv6-only under asyncio).
    host = bind_host(settings.host)
    sites = (
        [runner.site(host, settings.bind_port, sock=s, ssl_context=context) for s in sockets]
        if sockets
        else [runner.site(host, settings.bind_port, reuse_address=True, ssl_context=context)]
    )
    # The fog's peer port: mutual TLS with this node's node certificate, the
    # same app (pipeline/peers.py tells its requests apart).
    fog = app.get(FOG)
    peer_sites = []
    if fog is not None:
        mutual = fog.tls.server
        peer_sites = (
            [runner.site(host, settings.fog_port, sock=s, ssl_context=mutual) for s in peer_sockets]
            if peer_sockets
            else [runner.site(host, settings.fog_port, reuse_address=True, ssl_context=mutual)]
        )
    try:
        for site in (*sites, *peer_sites):
            await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = sites[0].bound_port
    running = RunningServer(runner, settings.host, port, tls)
    if peer_sites:
        running.peer_port = peer_sites[0].bound_port
    if onboarding and settings.onboarding_enabled:
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
    return running


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


# Allocations (less deallocations) of container objects between two young
# collections: CPython's default is 700, which a proxied request's own objects
# exceed, so the collector ran for about every request.
YOUNG_COLLECTION_THRESHOLD = 20_000


def settle_heap() -> None:
    """Once the process serves: what it loaded to start (modules, the app, the
    routes: hundreds of thousands of objects that live as long as it does) is
    moved out of the collector's sight (``gc.freeze``), and the young
    generation is collected less often. The collector took 6-7 % of a
    loaded node's CPU (perf, bench/README.md), most of it re-walking objects
    that never die. Requests free their objects by reference counting; only
    cycles wait for a collection, a little longer now."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


def stop_signals() -> asyncio.Event:
    """Set at SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def log_serving(
    settings: Settings,
    url: str,
    upstream: str,
    tls: TlsTerminator | None,
    announced: bool,
    port: int,
    workers: int = 1,
) -> None:
    """What an operator should know once the node serves."""
    processes = f" with {workers} worker processes" if workers > 1 else ""
    log.info("fognode listening on %s%s, forwarding to %s", url, processes, upstream)
    if tls is not None and tls.pair is not None:
        leaf = tls.pair.leaf
        names = cert_names(leaf).dns
        log.info(
            "TLS certificate for %s valid until %s (CA %s)",
            ", ".join(names),
            leaf.not_valid_after_utc.isoformat(),
            tls.ca_file,
        )
        if not is_constrained(tls.pair.ca):
            log.warning(
                "the CA %s has no name constraints: it can vouch for any website to every "
                "phone that trusts it; `fognode certs check` says how to move to a "
                "constrained one (docs/certificates.md)",
                tls.ca_file,
            )
        if settings.app_host_name.rstrip(".").lower() not in names:
            log.warning(
                "the certificate does not carry %s, the name SpeziLLMFog apps check "
                "(FOGNODE_APP_HOST_NAME): they will refuse it; issue one that does with "
                "`fognode certs issue NAME...`",
                settings.app_host_name,
            )
    else:
        log.warning("TLS is off: serving plain HTTP (development only)")
    app_port = 443 if settings.tls else 80
    if announced and port != app_port:
        log.warning(
            "announcing port %d, but SpeziLLMFog apps ignore the announced port and connect "
            "to %d: they will not reach this node. Serve on %d without root with "
            "`sudo .venv/bin/fognode service install` (see docs/deployment.md, Port 443).",
            port,
            app_port,
            app_port,
        )
