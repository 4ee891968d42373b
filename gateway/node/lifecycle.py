"""A node's life: its services entered in one order, left in the reverse, for 1 process or N.

Whether one process serves (server.py) or a supervisor and its workers do
(supervisor.py), the node runs the same services, entered in the order of
:data:`SERVICES`, each an async context manager on the :class:`Node` they
fill in, on one ``AsyncExitStack``. Where the two ways differ, a service
asks the :class:`Mode`: how the API is served on the port, and whether
worker processes serve it. A service that fails to start leaves the ones
before it in the reverse order, as a stop does.

Started, in this order:

    tls               the certificate pair, loaded: one no client would accept stops
                      the start here (CertError)
    identity          the node id and the status page's session key, made once; the
                      node certificate that makes it a member of a fog, if it has one
    upstream choice   which upstream serves (upstreams/choice.py), and the node's
                      Admission, sized for it
    embedded engine   llama.cpp's server, when chosen: loading from here on
    usage ledger      the usage store opened and migrated, its batch writer, the
                      node's quota ledger
    upstream pool     the node's probes of the upstreams, and its conversation table
    API port          one process: the app on the port; N: the port reserved and
                      the coordinator that answers the workers
    API keys          the key file watched: a key added or revoked reaches the
                      authorizer (N: every worker's, by a notice) within seconds
    onboarding page   the phone onboarding page on its own port
    worker processes  N: each on its share of the port, serving once it says so
    certificate files replaced files loaded (the workers load them when told), a
                      warning when their renewal is overdue (this process never signs)
    fog membership    the fog's members found and asked (node/fog.py), when the node
                      is one; what they say reaches every process that places requests
    mDNS announcement the node announced, its load and models kept true; withdrawn
                      while the node drains
    running record    <data dir>/running.json: where the node serves, for the
                      commands run beside it (`fognode certs qr`, `models`, `chat`)

Stopped in the reverse order: the running record removed, the mDNS goodbye
(so that clients stop picking the node while it drains); the fog's members
are no longer asked; the certificate watch stops; the workers
drain (each gets ``shutdown_timeout`` for its open requests) and exit, the
onboarding page closes, the API drains (one process) and the port is given
up; then the probes stop, the usage writer stores what is left
(``usage_close_grace``), and the embedded model stops last, once no request
can reach it.

A service is one line in :data:`SERVICES` and one function here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.registry import Collector

from ...auth.api_keys import ApiKeyEntry
from ...auth.key_file import KeyFileWatch
from ...auth.sessions import load_or_create_key
from ...embedded.metrics import EmbeddedCollector
from ...embedded.runtime import EmbeddedRuntime
from ...fog.members import CandidateView, Member
from ...usage.ledger import UsageLedger
from ...usage.writer import BatchWriter
from ...web.onboarding import OnboardingSite
from ..auth_setup import UnsafeConfiguration
from ..config.identity import node_id
from ..config.network import local_url, served_urls
from ..config.running import RunningNode, remove_running, write_running
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
from ..pages.onboarding import start_onboarding_page
from ..pipeline.admission import Admission, AdmissionCollector
from ..pipeline.quotas import WriterCollector, open_usage_store
from ..transport.cert_renewal import CertificateKeeper
from ..transport.connections import ConnectionGuard
from ..transport.peer_tls import PeerTls
from ..transport.tls import TlsTerminator
from ..upstreams.choice import choose_upstream, install_upstream_choice
from ..upstreams.pool import UpstreamPool
from .announce import NodeAnnouncer, node_announcer
from .fog import FogMembership

log = logging.getLogger("fognode.server")


class Mode(Protocol):
    """How the node serves its API: one process, or workers (supervisor.py)."""

    workers: int  # processes that serve requests (1: this one)

    def api_port(self, node: Node) -> AbstractAsyncContextManager[None]:
        """Serve (or prepare to serve) the port, and set ``node.port``."""
        ...

    def worker_processes(self, node: Node) -> AbstractAsyncContextManager[None]: ...

    @property
    def onboarding_guard(self) -> ConnectionGuard | None:
        """The connection guard the onboarding page shares (None: its own)."""
        ...

    def onboarding_at(self, url: str | None) -> None:
        """Where the onboarding page is, for the status page."""
        ...

    def certificates_changed(self) -> None:
        """The certificate files changed and were reloaded here."""
        ...

    def keys_changed(self, entries: tuple[ApiKeyEntry, ...]) -> None:
        """The node's API keys are these now (the key file changed)."""
        ...

    def credentials(self) -> str:
        """The kinds of credentials the API accepts, for the announcement."""
        ...

    def fog_found(self, members: list[Member], candidates: list[CandidateView]) -> None:
        """What the membership service found: to this process's view of the
        fog, or to every worker's."""
        ...

    def fog_failing(self, report: Callable[[str, str], None]) -> None:
        """Where a request that found a member failing is told (``report``:
        the membership service's, which asks that member again sooner)."""
        ...


@dataclass
class Node:
    """The node as its services come up; each fills in its part."""

    settings: Settings  # with the node id and the upstream decided, as they are
    mode: Mode
    tls: TlsTerminator | None = None
    certificates: CertificateKeeper | None = None  # watches its files
    choice: str = ""  # why this upstream
    runtime: EmbeddedRuntime | None = None  # the embedded model, when chosen
    admission: Admission = field(init=False)
    ledger: UsageLedger | None = None
    pool: UpstreamPool = field(init=False)
    # What the node counts at scrape time (its admission, writer, model): the
    # app's registry in one process, the supervisor's with workers.
    collectors: list[Collector] = field(default_factory=list)
    port: int = 0
    # The node's drain flag (core/drain.py): the announcement follows it, and
    # with workers every worker.
    drain: Drain = field(default_factory=Drain)
    peers: PeerTls | None = None  # its node certificate: a member of a fog
    peer_port: int | None = None  # where the fog's members reach it
    membership: FogMembership | None = None
    onboarding: OnboardingSite | None = None
    announcer: NodeAnnouncer | None = None


Service = Callable[[Node], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def tls(node: Node) -> AsyncIterator[None]:
    if node.settings.tls:
        node.tls = terminator(node.settings)
        await asyncio.to_thread(node.tls.load)
        node.certificates = CertificateKeeper(node.tls, renewal_options(node.settings))
    yield


@asynccontextmanager
async def identity(node: Node) -> AsyncIterator[None]:
    """Made here, once: workers would make them at the same moment (each a
    different node id in the same file; one reading the session key another
    has created but not yet written). The fog's messages name the node by its
    id; its node certificate (None: no member) is read here, once."""
    node.settings = await prepare_once(node.settings)
    node.peers = await asyncio.to_thread(peer_tls, node.settings)
    yield


async def prepare_once(settings: Settings) -> Settings:
    """The settings with the node id fixed; the status page's session key made."""
    settings = settings.model_copy(update={"node_id": await asyncio.to_thread(node_id, settings)})
    if settings.status_page:
        await asyncio.to_thread(load_or_create_key, settings.session_key_file)
    return settings


@asynccontextmanager
async def upstream_choice(node: Node) -> AsyncIterator[None]:
    choice = await choose_upstream(node.settings)
    node.settings, node.choice, node.runtime = choice.settings, choice.reason, choice.runtime
    # Its capacity is the choice's: an embedded model answers `parallel` at once.
    node.admission = admission_from(node.settings)
    node.collectors.append(AdmissionCollector(node.admission))
    yield


@asynccontextmanager
async def embedded_engine(node: Node) -> AsyncIterator[None]:
    runtime = node.runtime
    if runtime is None:
        yield
        return
    node.collectors.append(EmbeddedCollector(runtime))
    await runtime.start()  # returns at once: the model loads meanwhile
    try:
        yield
    finally:
        await runtime.stop()


@asynccontextmanager
async def usage_ledger(node: Node) -> AsyncIterator[None]:
    if not node.settings.usage_accounting:
        yield
        return
    ledger = node.ledger = await node_ledger(node.settings)
    node.collectors.append(WriterCollector(lambda: ledger.writer))
    try:
        yield
    finally:  # no request is left to record
        await close_ledger(ledger, usage_options(node.settings).close_grace)


async def node_ledger(settings: Settings) -> UsageLedger:
    """The node's quota ledger, with its batch writer and the usage store,
    opened and migrated (before any worker starts: workers only read it)."""
    options = store_options(settings)
    store = await open_usage_store(options)
    writer = BatchWriter(store, options)
    writer.start()
    return UsageLedger(writer, quota_options(settings))


async def close_ledger(ledger: UsageLedger, grace: float) -> None:
    await ledger.writer.close(grace)
    await ledger.writer.store.close()


@asynccontextmanager
async def upstream_pool(node: Node) -> AsyncIterator[None]:
    settings = node.settings
    urls = settings.upstream_urls or [settings.upstream_base]
    pool = node.pool = UpstreamPool(urls, upstream_options(settings))
    install_upstream_choice(pool, node.choice, node.runtime)
    await pool.start()  # the first probe
    try:
        yield
    finally:
        await pool.close()


@asynccontextmanager
async def api_port(node: Node) -> AsyncIterator[None]:
    async with node.mode.api_port(node):
        yield


@asynccontextmanager
async def api_keys(node: Node) -> AsyncIterator[None]:
    """The key file, watched: the authorizer checks what it holds now. Only
    this process looks at the file; with workers, each follows by a notice."""
    settings = node.settings
    if settings.auth == "none" or settings.api_keys_file is None:
        yield
        return
    try:
        watch = await asyncio.to_thread(KeyFileWatch, settings.api_keys_file, settings.api_keys)
    except (OSError, ValueError) as exc:
        raise UnsafeConfiguration(f"cannot load the API keys: {exc}") from None
    node.mode.keys_changed(watch.entries)
    follow = follow_keys(watch, settings.api_keys_check_interval, node.mode.keys_changed)
    async with in_background(follow, "fognode-api-keys"):
        yield


@asynccontextmanager
async def in_background(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """``work`` runs as a task while the service lasts, and is cancelled after."""
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def follow_keys(
    watch: KeyFileWatch, interval: float, changed: Callable[[tuple[ApiKeyEntry, ...]], None]
) -> None:
    """Look at the key file every ``interval`` seconds until cancelled; hand
    each new whole set to ``changed``. A file that cannot be used changes
    nothing, and is said once per change of the file."""
    while True:
        await asyncio.sleep(interval)
        try:
            change = await asyncio.to_thread(watch.check)
        except (OSError, ValueError) as exc:
            log.warning(
                "the API key file %s cannot be used (%s): the keys stay as they were",
                watch.path,
                exc,
            )
            continue
        if change is not None:
            changed(change.entries)
            log.info(
                "API keys from %s: %s; %d key(s) now",
                watch.path,
                "; ".join(
                    f"{what} {', '.join(names)}"
                    for what, names in (("added", change.added), ("removed", change.removed))
                    if names
                ),
                len(change.entries),
            )


@asynccontextmanager
async def onboarding_page(node: Node) -> AsyncIterator[None]:
    if not node.settings.onboarding_enabled:
        yield
        return
    page = await start_onboarding_page(node.settings, node.tls, node.mode.onboarding_guard)
    node.onboarding = page
    node.mode.onboarding_at(page.url if page is not None else None)
    try:
        yield
    finally:
        if page is not None:
            await page.stop()


@asynccontextmanager
async def worker_processes(node: Node) -> AsyncIterator[None]:
    async with node.mode.worker_processes(node):
        yield


@asynccontextmanager
async def certificate_files(node: Node) -> AsyncIterator[None]:
    keeper = node.certificates
    if keeper is None:
        yield
        return
    async with in_background(
        keeper.watch(on_change=node.mode.certificates_changed), "fognode-cert-watch"
    ):
        yield


@asynccontextmanager
async def fog_membership(node: Node) -> AsyncIterator[None]:
    if node.peers is None or node.peer_port is None:
        yield
        return
    options = membership_options(node.settings, port=node.peer_port)
    membership = node.membership = FogMembership(options, node.peers, node.mode.fog_found)
    node.mode.fog_failing(membership.report_failure)
    await membership.start()
    try:
        yield
    finally:
        await membership.stop()


@asynccontextmanager
async def mdns_announcement(node: Node) -> AsyncIterator[None]:
    if not node.settings.mdns:
        yield
        return
    announcer = node.announcer = node_announcer(
        node.settings,
        port=node.port,
        tls=node.tls,
        auth=node.mode.credentials(),
        admission=node.admission,
        pool=node.pool,
        peer_port=node.peer_port,
    )
    await announcer.start()
    if node.runtime is not None:  # announce the model as soon as it serves
        node.runtime.on_ready.append(announcer.refresh)
    node.drain.on_change.append(announcer.follow_drain)
    try:
        yield
    finally:  # goodbye first: clients stop picking this node while it drains
        await announcer.stop()


@asynccontextmanager
async def running_record(node: Node) -> AsyncIterator[None]:
    """Say where the node serves, in its data dir, for the commands beside it."""
    record = describe_running(node)
    await asyncio.to_thread(write_running, record)
    try:
        yield
    finally:
        await asyncio.to_thread(remove_running, record.pid)


def describe_running(node: Node) -> RunningNode:
    settings, tls = node.settings, node.tls is not None
    announced = node.announcer.advertiser.announcement if node.announcer is not None else None
    return RunningNode(
        pid=os.getpid(),
        url=local_url(settings.host, node.port, tls=tls),
        bind=settings.host,
        port=node.port,
        tls=tls,
        lan_urls=tuple(served_urls(settings.host, node.port, tls=tls)),
        onboarding=node.onboarding.url if node.onboarding is not None else None,
        host_name=announced.host.rstrip(".") if announced is not None else None,
        workers=node.mode.workers,
    )


SERVICES: tuple[Service, ...] = (
    tls,
    identity,
    upstream_choice,
    embedded_engine,
    usage_ledger,
    upstream_pool,
    api_port,
    api_keys,
    onboarding_page,
    worker_processes,
    certificate_files,
    fog_membership,
    mdns_announcement,
    running_record,
)


async def start_node(settings: Settings, mode: Mode, stack: AsyncExitStack) -> Node:
    """Every service entered on ``stack``, in order; closing it stops the node."""
    node = Node(settings, mode)
    for service in SERVICES:
        await stack.enter_async_context(service(node))
    return node


@asynccontextmanager
async def running_node(settings: Settings, mode: Mode) -> AsyncIterator[Node]:
    """The node, serving until the block ends."""
    async with AsyncExitStack() as stack:
        yield await start_node(settings, mode, stack)
