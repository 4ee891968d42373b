"""`fognode serve --workers N`: a supervisor process and N workers on one port.

One Python process uses one core; the workers use them all. Each worker
runs the whole app (worker.py) on its own socket of the node's port
(SO_REUSEPORT: the kernel spreads connections over them). The supervisor
serves no requests. It runs the node's services, as one process does and in
the same order (lifecycle.py: the upstream choice and the embedded model,
the usage ledger, the upstream probes, the onboarding page on its own port
with a guard of its own, the certificate files' watch, the mDNS announcement), and
in :class:`Workers`, the mode of that lifecycle, what only a node of
workers has:

* the port, reserved once (workers/ports.py), and in a fog the peer port,
  which every worker serves too, on its own socket of it;
* the coordinator (coordinator.py), which answers the workers with the
  node's parts: its one Admission (caps and queues are the node's, never a
  process's), its quota ledger and usage writer, its conversation table and
  sign-in throttle, its drain flag and its state for the fog's members; and
  which sums every worker's /metrics and status page activity, tells every
  worker what the probes and the fog's membership found, the embedded
  model's state, the drain flag, a sign-out and new certificate files;
* the workers themselves (workers/processes.py): started, restarted with
  backoff when one dies (its slots come back through its channel), and
  stopped where the lifecycle says: after the mDNS goodbye, each draining
  its open requests (``shutdown_timeout``).

Connection caps are per process by nature (a connection lives in one
worker), so each worker gets its share of ``max_connections``,
``max_connections_per_client`` and ``upstream_max_concurrent``: the shares
add up to the setting, never more (docs/workers.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import SecretStr

from ...auth.api_keys import ApiKeyEntry
from ...fog.members import CandidateView, Member
from ...supervision import cores
from ...workers.ports import SharedPort
from ...workers.processes import Launch, WorkerProcess
from ..config.network import bind_host
from ..config.settings import Settings
from ..pages.fog import NodeState
from ..pages.sessions import LocalSignInThrottle
from ..transport.connections import ConnectionGuard
from .coordinator import Coordinator
from .lifecycle import Node
from .protocol import FogMembers, ReloadTls

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


def with_ticket_secret(settings: Settings) -> Settings:
    """The settings the workers get: with one TLS ticket secret for all of
    them, made here unless configured, so that every worker resumes every
    session."""
    if not settings.tls or settings.tls_ticket_secret is not None:
        return settings
    return settings.model_copy(update={"tls_ticket_secret": SecretStr(secrets.token_hex(32))})


class Workers:
    """The node's mode where worker processes serve the API: the supervisor
    reserves the port, holds the node's parts for them (the coordinator),
    and starts, restarts and stops them."""

    def __init__(self, count: int) -> None:
        self.workers = count
        self.registry = CollectorRegistry(auto_describe=True)
        self._coordinator: Coordinator | None = None
        self._port: SharedPort | None = None
        self._peer_port: SharedPort | None = None  # the fog's, when the node is a member
        self._settings: Settings | None = None

    @property
    def coordinator(self) -> Coordinator:
        assert self._coordinator is not None, "the port is not reserved yet"
        return self._coordinator

    @asynccontextmanager
    async def api_port(self, node: Node) -> AsyncIterator[None]:
        """The port reserved (a worker that restarts finds it still ours), the
        fog's peer port too, and the coordinator that will answer the workers."""
        settings = with_ticket_secret(node.settings)
        host = bind_host(settings.host)
        port = self._port = SharedPort.reserve(host, settings.bind_port)
        try:
            if node.peers is not None:
                # Its number fixed here, so that workers tell its sockets apart.
                self._peer_port = SharedPort.reserve(host, settings.fog_port)
                settings = settings.model_copy(update={"fog_port": self._peer_port.port})
                node.peer_port = self._peer_port.port
            self._settings = settings
            coordinator = self._coordinator = self._coordinate(node)
            await coordinator.probed_now()  # what the pool's first probe found
            node.port = port.port
            yield
        finally:
            if self._coordinator is not None:
                self._coordinator.close()
            port.close()
            if self._peer_port is not None:
                self._peer_port.close()

    def _coordinate(self, node: Node) -> Coordinator:
        for collector in node.collectors:
            self.registry.register(collector)
        coordinator = Coordinator(
            node.admission,
            self.registry,
            node.pool,
            choice=node.choice,
            drain=node.drain,
            ledger=node.ledger,
            throttle=LocalSignInThrottle() if node.settings.status_page else None,
        )
        runtime = node.runtime
        if runtime is not None:  # the workers follow the model's state

            def embedded_changed() -> None:
                coordinator.embedded_changed(runtime.status())

            runtime.on_change.append(embedded_changed)
            embedded_changed()
        # The node probes each upstream once, here; every worker follows.
        node.pool.on_probed.append(coordinator.probed_now)
        node.drain.on_change.append(coordinator.drain_changed)
        if node.peers is not None:  # a member of a fog: its state is the node's
            coordinator.fog = FogMembers((), ())
            coordinator.fog_state = NodeState(
                node.settings.node_id or "",
                node.peers.name,
                node.admission,
                node.pool,
                node.drain,
                coordinator.first_token,
            ).state
        return coordinator

    @asynccontextmanager
    async def worker_processes(self, node: Node) -> AsyncIterator[None]:
        processes = [WorkerProcess(n, self._launch) for n in range(1, self.workers + 1)]
        self.registry.register(_WorkerCollector(processes))
        grace = node.settings.shutdown_timeout + EXIT_GRACE
        try:
            started = await asyncio.gather(*(w.start() for w in processes), return_exceptions=True)
            failed = [r for r in started if isinstance(r, BaseException)]
            if failed:
                raise failed[0]
            yield
        finally:  # each drains its open requests (shutdown_timeout), then exits
            await asyncio.gather(*(w.stop(grace) for w in processes))

    @property
    def onboarding_guard(self) -> ConnectionGuard | None:
        return None  # the supervisor serves no API: the page gets a guard of its own

    def onboarding_at(self, url: str | None) -> None:
        self.coordinator.onboarding = url  # every worker's status page links to it

    def certificates_changed(self) -> None:
        self.coordinator.broadcast(ReloadTls())  # each worker loads the new files

    def keys_changed(self, entries: tuple[ApiKeyEntry, ...]) -> None:
        self.coordinator.keys_changed(entries)  # every worker, now and at its start

    def credentials(self) -> str:
        return self.coordinator.auth or "none"  # as the workers said when ready

    def fog_found(self, members: list[Member], candidates: list[CandidateView]) -> None:
        self.coordinator.fog_found(members, candidates)

    def fog_failing(self, report: Callable[[str, str], None]) -> None:
        self.coordinator.fog_failed = report

    async def _launch(self, number: int) -> Launch:
        """How to start worker ``number`` (again): its channel, its sockets of
        the port, its settings on stdin."""
        assert self._port is not None and self._settings is not None
        theirs, ready = await self.coordinator.attach(number)
        try:
            sockets = self._port.sockets()
            if self._peer_port is not None:
                sockets += self._peer_port.sockets()
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
            stdin=pickle.dumps(worker_settings(self._settings, self.workers, number - 1)),
            ready=ready,
            after_spawn=close_ours,
        )
