"""`fognode serve --workers N`: a supervisor process and N workers on one port.

One Python process uses one core; the workers use them all. Each worker
runs the whole app (worker.py) on its own socket of the node's port
(SO_REUSEPORT: the kernel spreads connections over them). The supervisor
serves no requests. It owns what must happen once for the node:

* the upstream choice, and the embedded model when chosen (started once;
  the workers forward to it and follow its state);
* the node's one Admission, behind the coordinator (coordinator.py): caps
  and queues are the node's, never a process's;
* the node's quota ledger and usage writer (:func:`node_ledger`): quota
  reservations and unwritten records are the node's, every record written
  here; a sign-out in one worker is passed on to all;
* the upstream checks (each upstream probed once for the node; the workers
  follow what was found, and ask for a check after a pull through them);
* the conversation affinity table and the status page's sign-in throttle
  (the workers ask the coordinator), and the status page's activity,
  summed from every worker's as /metrics is;
* the mDNS announcement (announced once, its load and capacity the node's);
* certificate renewal (issued once; the workers load the new files when
  told);
* the node's membership of its fog (node/fog.py: the members asked once for
  the node, what was found told to every worker) and its drain flag; every
  worker serves the peer port too, on its own socket of it;
* the phone onboarding page, on its own port (web/onboarding), with a
  connection guard of its own;
* the workers themselves (workers/processes.py): started, restarted with
  backoff when one dies (its slots come back through its channel), and
  stopped in order: mDNS goodbye first, then the workers drain
  (``shutdown_timeout``), then the supervisor exits.

Connection caps are per process by nature (a connection lives in one
worker), so each worker gets its share of ``max_connections``,
``max_connections_per_client`` and ``upstream_max_concurrent``: the shares
add up to the setting, never more (docs/workers.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import secrets
import sys
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import SecretStr

from ...auth.sessions import load_or_create_key
from ...embedded.metrics import EmbeddedCollector
from ...supervision import cores
from ...usage.ledger import UsageLedger
from ...usage.writer import BatchWriter
from ...web.onboarding import OnboardingSite
from ...workers.ports import SharedPort
from ...workers.processes import Launch, WorkerProcess
from ..config.identity import node_id
from ..config.network import bind_host, local_url
from ..config.settings import Settings
from ..core.drain import Drain
from ..options import (
    admission_from,
    membership_options,
    peer_tls,
    quota_options,
    renewal_options,
    store_options,
    terminator,
    upstream_options,
    usage_options,
)
from ..pages.fog import NodeState
from ..pages.onboarding import start_onboarding_page
from ..pages.sessions import LocalSignInThrottle
from ..pipeline.admission import AdmissionCollector
from ..pipeline.quotas import WriterCollector, open_usage_store
from ..transport.cert_renewal import CertificateKeeper
from ..upstreams.choice import choose_upstream
from ..upstreams.pool import UpstreamPool
from .announce import NodeAnnouncer
from .coordinator import Coordinator
from .fog import FogMembership
from .protocol import FogMembers, ReloadTls
from .server import log_serving, node_announcer, stop_signals

log = logging.getLogger("fognode.workers")

# Beyond shutdown_timeout, how long a worker may take to exit before SIGKILL.
EXIT_GRACE = 10.0


# Caps a worker process enforces alone (a connection, an upstream request
# lives in one process): each worker gets a share (supervisor.worker_share).
SPLIT_CAPS = ("max_connections", "max_connections_per_client", "upstream_max_concurrent")


def worker_count(settings: Settings) -> int:
    """Processes to serve with: the setting, or one per core (0); never more
    than the smallest divided cap allows (each worker's share is at least 1,
    so more workers would together allow more than the cap)."""
    caps = [int(getattr(settings, name)) for name in SPLIT_CAPS]
    return max(1, min([settings.workers or cores(), *(cap for cap in caps if cap > 0)]))


def worker_share(total: int, workers: int, index: int) -> int:
    """Worker ``index``'s part of a cap of ``total`` (0: no cap), so that the
    parts add up to the cap. Every worker gets at least 1, which would exceed
    a cap smaller than the number of workers (server.worker_count starts no
    more workers than that)."""
    if total <= 0:
        return 0
    return max(1, total // workers + (1 if index < total % workers else 0))


def worker_settings(settings: Settings, workers: int, index: int) -> Settings:
    return settings.model_copy(
        update={name: worker_share(getattr(settings, name), workers, index) for name in SPLIT_CAPS}
    )


class _WorkerCollector(Collector):
    def __init__(self, workers: list[WorkerProcess]) -> None:
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "fognode_worker_up", "1 while the worker process serves.", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "fognode_worker_restarts",
            "Restarts of a worker process after it stopped unexpectedly.",
            labels=["worker"],
        )
        for worker in self.workers:
            up.add_metric([str(worker.number)], 1 if worker.serving else 0)
            restarts.add_metric([str(worker.number)], worker.restarts)
        yield from (up, restarts)


async def prepare_once(settings: Settings) -> Settings:
    """What every worker would otherwise make at its start, at the same moment
    as the others: made here, once, before any worker starts. The node id
    (each worker would write a different one to the same file) and the status
    page's session key (a worker reading the file another has created but not
    yet written would fail); the TLS ticket secret (so that every worker
    resumes every session); the usage store: :func:`node_ledger`. Returns the
    settings the workers get: with the node id and the ticket secret fixed."""
    settings = settings.model_copy(update={"node_id": await asyncio.to_thread(node_id, settings)})
    if settings.tls and settings.tls_ticket_secret is None:
        secret = SecretStr(secrets.token_hex(32))
        settings = settings.model_copy(update={"tls_ticket_secret": secret})
    if settings.status_page:
        await asyncio.to_thread(load_or_create_key, settings.session_key_file)
    return settings


async def node_ledger(settings: Settings) -> UsageLedger:
    """The node's quota ledger, with its batch writer and the usage store,
    opened and migrated here once, before any worker starts (the workers
    then only read it, for reports). Every worker's quota checks and
    records come here (coordinator.py), so reservations and unwritten
    records are the node's."""
    options = store_options(settings)
    store = await open_usage_store(options)
    writer = BatchWriter(store, options)
    writer.start()
    return UsageLedger(writer, quota_options(settings))


async def close_ledger(ledger: UsageLedger, grace: float) -> None:
    await ledger.writer.close(grace)
    await ledger.writer.store.close()


async def serve_workers(settings: Settings, count: int) -> None:
    """Serve with ``count`` workers until SIGINT/SIGTERM, then stop in order."""
    stop = stop_signals()
    tls = terminator(settings) if settings.tls else None
    if tls is not None:
        await asyncio.to_thread(tls.load)  # a pair no client would accept: CertError, once
    settings = await prepare_once(settings)
    choice = await choose_upstream(settings)
    settings = choice.settings
    port = SharedPort.reserve(bind_host(settings.host), settings.bind_port)
    # The fog: this node's peer credentials, and the peer port every worker
    # serves too (its number fixed here, so that workers tell its sockets apart).
    peers = await asyncio.to_thread(peer_tls, settings)
    peer_port = SharedPort.reserve(bind_host(settings.host), settings.fog_port) if peers else None
    if peer_port is not None:
        settings = settings.model_copy(update={"fog_port": peer_port.port})
    admission = admission_from(settings)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(AdmissionCollector(admission))
    runtime = choice.runtime
    # The supervisor's own look at the upstreams, for the announcement; its
    # conversation table is the node's (the workers ask it).
    urls = settings.upstream_urls or [settings.upstream_base]
    pool = UpstreamPool(urls, upstream_options(settings))
    # Draining is the node's: the flag here, every worker told (Draining).
    drain = Drain()
    coordinator = Coordinator(
        admission,
        registry,
        pool,
        choice=choice.reason,
        drain=drain,
        throttle=LocalSignInThrottle() if settings.status_page else None,
    )

    async def launch(number: int) -> Launch:
        theirs, ready = await coordinator.attach(number)
        try:
            sockets = port.sockets() + (peer_port.sockets() if peer_port is not None else [])
        except BaseException:
            theirs.close()
            raise
        fds = (theirs.fileno(), *(s.fileno() for s in sockets))

        def close_ours() -> None:
            theirs.close()
            for sock in sockets:
                sock.close()

        return Launch(
            argv=[
                sys.executable,
                "-m",
                "fognode.gateway.node.worker",
                str(os.getpid()),
                str(number),
            ]
            + [str(fd) for fd in fds],
            pass_fds=fds,
            stdin=pickle.dumps(worker_settings(settings, count, number - 1)),
            ready=ready,
            after_spawn=close_ours,
        )

    workers = [WorkerProcess(n, launch) for n in range(1, count + 1)]
    registry.register(_WorkerCollector(workers))
    if runtime is not None:
        registry.register(EmbeddedCollector(runtime))
        for member in pool.members:
            member.local = runtime.server

        def embedded_changed() -> None:
            coordinator.embedded_changed(runtime.status())

        runtime.on_change.append(embedded_changed)
        runtime.on_ready.append(pool.refresh)
        embedded_changed()

    # The node probes each upstream once, here; every worker follows.
    pool.on_probed.append(coordinator.probed_now)
    # The fog is the node's: the membership service here, every worker told.
    membership: FogMembership | None = None
    if peers is not None and peer_port is not None:
        coordinator.fog = FogMembers((), ())
        coordinator.fog_state = NodeState(
            settings.node_id or "", peers.name, admission, pool, drain, coordinator.first_token
        ).state
        membership = FogMembership(
            membership_options(settings, port=peer_port.port), peers, coordinator.fog_found
        )
        coordinator.fog_failed = membership.report_failure
    drain.on_change.append(coordinator.drain_changed)
    announcer: NodeAnnouncer | None = None
    renewal: asyncio.Task[None] | None = None
    onboarding: OnboardingSite | None = None
    ledger: UsageLedger | None = None
    try:
        if settings.usage_accounting:
            ledger = coordinator.ledger = await node_ledger(settings)
            registry.register(WriterCollector(lambda: ledger.writer if ledger else None))
        if runtime is not None:
            await runtime.start()
        await pool.start()
        if settings.onboarding_enabled:
            # One page on its own port, here: a worker restarting never takes it away.
            onboarding = await start_onboarding_page(settings, tls, None)
            coordinator.onboarding = onboarding.url if onboarding else None
        started = await asyncio.gather(*(w.start() for w in workers), return_exceptions=True)
        failed = [r for r in started if isinstance(r, BaseException)]
        if failed:
            raise failed[0]
        if tls is not None:
            keeper = CertificateKeeper(tls, renewal_options(settings))
            renewal = asyncio.create_task(
                keeper.watch(on_change=lambda: coordinator.broadcast(ReloadTls())),
                name="fognode-cert-watch",
            )
        if membership is not None:
            await membership.start()
        if settings.mdns:
            announcer = node_announcer(
                settings,
                port=port.port,
                tls=tls,
                auth=coordinator.auth or "none",
                admission=admission,
                pool=pool,
                peer_port=peer_port.port if peer_port is not None else None,
            )
            await announcer.start()
            if runtime is not None:
                runtime.on_ready.append(announcer.refresh)
            drain.on_change.append(announcer.follow_drain)
        log_serving(
            settings,
            local_url(settings.host, port.port, tls=settings.tls),
            pool.base,
            tls,
            announcer is not None and announcer.announced,
            port.port,
            workers=count,
        )
        await stop.wait()
        log.info("shutting down; open requests get %ss to finish", settings.shutdown_timeout)
    finally:
        # Goodbye on mDNS first, so clients stop picking this node while it drains.
        if announcer is not None:
            await announcer.stop()
        if membership is not None:
            await membership.stop()
        await asyncio.gather(*(w.stop(settings.shutdown_timeout + EXIT_GRACE) for w in workers))
        if onboarding is not None:
            await onboarding.stop()
        if renewal is not None:
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        coordinator.close()
        if ledger is not None:  # every worker has stopped: no record comes any more
            await close_ledger(ledger, usage_options(settings).close_grace)
        await pool.close()
        if runtime is not None:
            await runtime.stop()
        port.close()
        if peer_port is not None:
            peer_port.close()
