"""Run the app: bind, serve until told to stop, drain, exit.

One process serves it all here (:class:`OneProcess`, the mode of the node's
lifecycle that :func:`start_server` runs); with worker processes
(supervisor.py), each worker runs the app with :func:`run_app`, like the
single process does. serve.py picks between the two.

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
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from cryptography import x509

from ...auth.api_keys import ApiKeyEntry
from ...certs.constraints import is_constrained
from ...certs.issuer import cert_names
from ...fog.members import CandidateView, Member
from ...web.onboarding import OnboardingSite
from ..app import NodeParts, create_app
from ..config.identity import host_name, node_id
from ..config.network import bind_host, is_wildcard, local_url, served_addresses, served_urls
from ..config.settings import Settings
from ..options import upstream_connections
from ..pages.status import LISTENING
from ..pipeline.access import AUTHORIZER, Authorizer
from ..telemetry.metrics import METRICS
from ..transport.connections import ConnectionGuard, connection_limits
from ..transport.slow_clients import GuardedAppRunner
from ..transport.tls import TlsTerminator
from ..upstreams.peers import FOG
from ..upstreams.pool import UPSTREAM
from .announce import NodeAnnouncer
from .fog import FogMembership
from .lifecycle import Node, start_node

log = logging.getLogger("fognode.server")


@dataclass
class RunningServer:
    """An app serving on guarded connections; :meth:`stop` stops what was
    started with it (the whole node, for :func:`start_server`)."""

    runner: GuardedAppRunner
    host: str
    port: int
    tls: TlsTerminator | None = None
    announcer: NodeAnnouncer | None = None
    onboarding: OnboardingSite | None = None  # the phone onboarding page, if it serves
    peer_port: int | None = None  # the fog's peer port, when the node is a member
    membership: FogMembership | None = None  # the node's membership service (one process)
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)

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
        await self.stack.aclose()


class OneProcess:
    """The node's mode where this process serves the API itself: the app holds
    the node's parts (its Admission, ledger, pool), not remote twins."""

    workers = 1

    def __init__(self, *, authorizer: Authorizer | None = None) -> None:
        self.authorizer = authorizer  # the tests' own; else built from the settings
        self.running: RunningServer | None = None

    @asynccontextmanager
    async def api_port(self, node: Node) -> AsyncIterator[None]:
        settings = node.settings
        parts = NodeParts(
            node.admission,
            node.pool,
            node.ledger,
            collectors=node.collectors,
            drain=node.drain,
            peers=node.peers,
        )
        app = create_app(
            settings,
            parts,
            authorizer=self.authorizer,
            tls=node.tls,
            certificates=node.certificates,
        )
        running = self.running = await run_app(app, settings, node.tls)
        node.port, node.peer_port = running.port, running.peer_port
        try:
            yield
        finally:  # open requests get shutdown_timeout to finish
            await running.runner.cleanup()

    @asynccontextmanager
    async def worker_processes(self, node: Node) -> AsyncIterator[None]:
        yield  # none: this process serves

    @property
    def onboarding_guard(self) -> ConnectionGuard | None:
        # The page counts against the API's connection caps.
        return self.running.runner.guard if self.running is not None else None

    def onboarding_at(self, url: str | None) -> None:
        listening = self.running.app.get(LISTENING) if self.running is not None else None
        if listening is not None:  # what the status page shows
            listening.onboarding_url = url

    def certificates_changed(self) -> None:
        pass  # the app serves the terminator that was reloaded

    def keys_changed(self, entries: tuple[ApiKeyEntry, ...]) -> None:
        if self.authorizer is not None:
            return  # a caller's own authorizer (the tests'): its keys are its own
        assert self.running is not None
        self.running.app[AUTHORIZER].use_keys(entries)

    def credentials(self) -> str:
        assert self.running is not None
        return self.running.app[AUTHORIZER].kinds

    def fog_found(self, members: list[Member], candidates: list[CandidateView]) -> None:
        assert self.running is not None
        self.running.app[FOG].follow(members, candidates)

    def fog_failing(self, report: Callable[[str, str], None]) -> None:
        assert self.running is not None
        self.running.app[FOG].on_failure = report


async def start_server(
    settings: Settings, *, authorizer: Authorizer | None = None
) -> RunningServer:
    """The whole node in this process (``workers`` = 1, and the tests), until
    :meth:`RunningServer.stop`."""
    mode = OneProcess(authorizer=authorizer)
    async with AsyncExitStack() as stack:
        node = await start_node(settings, mode, stack)
        assert mode.running is not None
        running = mode.running
        running.announcer, running.onboarding = node.announcer, node.onboarding
        running.membership = node.membership
        running.stack = stack.pop_all()
    return running


async def run_app(
    app: web.Application,
    settings: Settings,
    tls: TlsTerminator | None,
    *,
    sockets: list[socket.socket] | None = None,
    peer_sockets: list[socket.socket] | None = None,
) -> RunningServer:
    """Serve ``app`` on guarded connections: on the host and port of the
    settings, or on ``sockets`` bound already (a worker's share of the port);
    in a fog also on the peer port (``peer_sockets``: a worker's share). What
    its ``stop`` stops is the caller's to put on its ``stack``."""
    upstreams = max(1, len(settings.upstream_urls))
    runner = GuardedAppRunner(
        app,
        header_timeout=settings.header_timeout,
        limits=connection_limits(
            max_connections=settings.max_connections,
            max_per_client=settings.max_connections_per_client,
            first_byte_timeout=settings.client_first_byte_timeout,
            upstream_descriptors=upstreams * upstream_connections(settings),
            # A worker's caps are its share of the node's, which the node logs.
            share=sockets is not None,
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
    listening = app.get(LISTENING)
    if listening is not None:  # what the status page shows
        where = "every interface" if is_wildcard(settings.host) else settings.host
        listening.url = f"{where}, port {port} ({'HTTPS' if tls else 'plain HTTP'})"
        listening.connections = runner.guard
    return running


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


def _check_lan_names(settings: Settings, leaf: x509.Certificate, port: int) -> None:
    """Warn when the LAN reaches the node at an address its certificate does
    not name (DHCP gave this machine another one since it was issued): a
    client that connects to that address by name check fails. The node's
    own .local name does not change with the address."""
    have = cert_names(leaf)
    missing = [ip for ip in served_addresses(settings.host) if ip not in have.ips]
    if not missing:
        return
    own = host_name(settings, node_id(settings)).rstrip(".").lower()
    works = (
        f"https://{own}:{port} (the node's own name, which it carries) works whatever the address"
        if own in have.dns
        else f"the renewed one also carries {own}, the node's own name, which follows any address"
    )
    log.warning(
        "the server certificate does not name %s, where this node serves the LAN now: "
        "https://%s:%d fails the certificate check (the address changed since it was "
        "issued?). `fognode certs renew` re-issues it for this machine's addresses, and the "
        "node loads it without a restart; %s. SpeziLLMFog apps check spezillmfog.local "
        "only and are not affected.",
        ", ".join(str(ip) for ip in missing),
        missing[0],
        port,
        works,
    )


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
    where = "every interface" if is_wildcard(settings.host) else settings.host
    lan = served_urls(settings.host, port, tls=tls is not None)
    reached = ", ".join([*lan, url] if is_wildcard(settings.host) else [url])
    log.info(
        "fognode listening on %s, port %d (%s)%s, forwarding to %s",
        where,
        port,
        reached,
        processes,
        upstream,
    )
    if workers > 1:  # each worker enforces a share; the operator set the node's
        log.info(
            "client connections: %s, %s per client address (the node's; each of the %d "
            "workers enforces its share)",
            f"at most {settings.max_connections}"
            if settings.max_connections
            else "as many as the descriptor limits allow",
            settings.max_connections_per_client or "no cap",
            workers,
        )
    if tls is not None and tls.pair is not None:
        leaf = tls.pair.leaf
        names = cert_names(leaf).dns
        log.info(
            "TLS certificate for %s valid until %s (CA %s)",
            ", ".join(names),
            leaf.not_valid_after_utc.isoformat(),
            tls.ca_file,
        )
        _check_lan_names(settings, leaf, port)
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
