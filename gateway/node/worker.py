"""One worker process: the app on its share of the node's port, admitted by the supervisor.

The supervisor (supervisor.py) starts ``python -m fognode.gateway.node.worker
PARENT_PID NUMBER CHANNEL_FD LISTEN_FD...`` and writes the settings to its
stdin, pickled: an exact copy of the supervisor's settings (the upstream it
chose, secrets included, which no command line or environment would carry
as privately), through a pipe only the supervisor holds. The descriptors
are inherited: the worker's end of its channel to the supervisor and the
sockets it listens on.

The worker runs the same app as a single process, except that what must
be the node's is the supervisor's, asked over the channel (protocol.py).
Each part the app asks has a local implementation, which one process and
the supervisor hold, and a remote twin here:

    the admission stage's slots   Admission           RemoteAdmission
    the usage stage's quotas      UsageLedger         RemoteUsageLedger
    and records
    the pool's conversations      AffinityTable       RemoteAffinityTable
    the sign-in throttle          LocalSignInThrottle RemoteSignInThrottle

/metrics and the status page's activity are the whole node's, gathered by
the supervisor from every worker; the pool probes no upstream itself but
follows the supervisor's probes; the certificate files are reloaded when the
supervisor says they changed (it alone renews them); its authorizer checks
the API keys the supervisor sends (Keys: it alone watches the key file). It dies with the
supervisor (PR_SET_PDEATHSIG), and stops when its channel closes, which only
happens when the supervisor is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import pickle
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from ...certs.errors import CertError
from ...embedded.supervisor import ServerStatus
from ...fog.state import PeerState
from ...supervision import die_with_parent
from ...usage.ledger import BudgetWarning, Reservation
from ...usage.options import Limits
from ...usage.quota import ALLOW_UNLIMITED, Usage
from ...usage.record import UsageRecord
from ...workers.channel import ChannelClosed, Refused, Reply
from ...workers.messages import Leased, Peer, Table
from ..app import NodeParts, create_app
from ..config.settings import Settings
from ..core.drain import DRAIN, Drain
from ..core.errors import GatewayError
from ..options import peer_tls, terminator, upstream_options
from ..pages.sessions import SESSIONS, BrowserSessions
from ..pages.status import ACTIVITY, LISTENING, ActivitySource
from ..pipeline.access import AUTHORIZER, Authorizer
from ..pipeline.admission import Load, Slots, Ticket
from ..telemetry.activity import ActivityView
from ..telemetry.logs import configure_logging
from ..telemetry.metrics import METRICS, Metrics
from ..telemetry.stats import STATS, GatewayStats
from ..transport.tls import TlsTerminator
from ..upstreams.choice import follow_upstream_choice
from ..upstreams.peers import FOG, FogPeers
from ..upstreams.pool import UpstreamPool
from . import protocol as msg
from .serve import run_loop, startup_failure
from .server import RunningServer, run_app, settle_heap, stop_signals

log = logging.getLogger("fognode.workers")


@dataclass(frozen=True, slots=True)
class RemotePermit:
    lease: Leased[msg.Admitted] | Leased[msg.Tried]  # the call that granted the slots


class RemoteAdmission:
    """Admission as the stage sees it, answered by the supervisor's Admission.

    One round trip per admitted request (Acquire; the release needs no
    answer), multiplexed with every other request on the worker's one
    channel. A request whose client leaves while it waits cancels its call,
    and so its place in the queue. Only what the stage needs is here: the
    node's live counts are the supervisor's, in /metrics.
    """

    def __init__(self, peer: Peer, capacity: int) -> None:
        self.peer = peer
        self._capacity = capacity
        self._waits = itertools.count(1)
        self._waiting: dict[Ticket, int] = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    async def acquire(
        self,
        uid: str,
        ticket: Ticket | None = None,
        slots: Slots = Slots.BOTH,
        priority: str | None = None,
    ) -> RemotePermit:
        wait = next(self._waits)
        if ticket is not None:
            self._waiting[ticket] = wait
        try:
            leased = await self.peer.lease(msg.Acquire(wait, uid, slots, priority))
        except ChannelClosed:
            raise _restarting() from None
        finally:
            if ticket is not None:
                self._waiting.pop(ticket, None)
        if leased.value.refusal is not None:
            raise leased.value.refusal.error()
        return RemotePermit(leased)

    async def try_now(
        self, uid: str, slots: Slots = Slots.BOTH, priority: str | None = None
    ) -> RemotePermit | float:
        """One round trip, answered in the step that reads it: the slots, or
        the seconds a request would wait for them."""
        try:
            leased = await self.peer.lease(msg.TryNow(uid, slots, priority))
        except ChannelClosed:
            raise _restarting() from None
        if leased.value.wait is not None:
            return leased.value.wait
        return RemotePermit(leased)

    def release(self, permit: RemotePermit) -> None:
        self.peer.done(permit.lease)

    async def load(self) -> Load:
        try:
            return await self.peer.call(msg.LoadNow())
        except ChannelClosed:
            return Load(0, 0)

    async def position(self, ticket: Ticket) -> int | None:
        wait = self._waiting.get(ticket)
        if wait is None:
            return None
        try:
            return await self.peer.call(msg.Position(wait))
        except ChannelClosed:
            return None


class RemoteUsageLedger:
    """The usage stage's quota ledger, answered by the supervisor's UsageLedger.

    The reservations of requests in flight and the records not yet written
    are the node's: a request with a quota costs one round trip at its start
    (the supervisor decides and reserves, the reservation a lease on the
    channel), and its record goes to the supervisor's writer at its end, in
    the same step that ends the reservation. A request without limits costs
    no round trip, only its record. Should this worker die, the channel drops
    and the supervisor ends its reservations (their records are lost, as
    with a crash of a single process).
    """

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self._requests = itertools.count(1)
        self._leases: dict[Reservation, tuple[int, Leased[msg.Decided]]] = {}

    async def admit(self, uid: str, limits: Limits, *, estimate: int) -> Reservation:
        if limits.unlimited:
            return Reservation(uid, estimate, time.time(), ALLOW_UNLIMITED)
        request = next(self._requests)
        leased = await self.peer.lease(msg.Quota(request, uid, limits, estimate))
        decision = leased.value.decision
        reservation = Reservation(
            uid, estimate, leased.value.started_at, decision, settled=not decision.allowed
        )
        if decision.allowed:
            self._leases[reservation] = (request, leased)
        return reservation

    def settle(self, reservation: Reservation, record: UsageRecord) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        held = self._leases.pop(reservation, None)
        if held is None:  # no limits: nothing reserved
            self.record(record)
            return
        request, leased = held
        self.peer.notify(msg.Settle(request, record))
        self.peer.done(leased)

    def record(self, record: UsageRecord) -> None:
        self.peer.notify(msg.Record(record))

    async def pending_records(self) -> int:
        return await self.peer.call(msg.Pending())

    async def usage(self, uid: str) -> Usage:
        return await self.peer.call(msg.UsageOf(uid))

    async def warnings(self) -> tuple[BudgetWarning, ...]:
        return await self.peer.call(msg.Warnings())


def _restarting() -> GatewayError:
    return GatewayError(
        503,
        "This node is restarting a process; retry in a moment.",
        code="node_restarting",
        headers={"Retry-After": "1"},
    )


class RemoteAffinityTable:
    """The node's conversation table (routing/affinity.py), in the supervisor.

    Asked only for a conversation's later turns (a first turn looks up
    nothing), and only with affinity on and several upstreams; what served a
    turn is told, with no answer awaited.
    """

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def recall(self, lookups: Sequence[bytes]) -> int | None:
        try:
            return await self.peer.call(msg.Recall(tuple(lookups)))
        except ChannelClosed:
            return None  # routed as a new conversation

    def remember(self, key: bytes, upstream: int) -> None:
        self.peer.notify(msg.Remember(key, upstream))


class RemoteSignInThrottle:
    """The node's sign-in throttle (a LocalSignInThrottle), in the supervisor:
    one round trip to look, one to count an attempt (sign-ins are rare)."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    async def retry_after(self, client: str) -> float:
        try:
            return await self.peer.call(msg.SignInWait(client))
        except ChannelClosed:
            raise _restarting() from None

    async def attempt(self, client: str) -> None:
        try:
            await self.peer.call(msg.SignInAttempt(client))
        except ChannelClosed:
            raise _restarting() from None

    def succeeded(self, client: str) -> None:
        self.peer.notify(msg.SignedIn(client))


class SupervisorLink:
    """The worker's end of its channel: what the supervisor asks of this
    worker and tells it, and the remote parts that call it.

    Made before the app exists (the channel is the first thing a worker
    opens), so it holds what arrives early until the app is there.
    """

    def __init__(self) -> None:
        self.metrics: Metrics | None = None
        self.tls: TlsTerminator | None = None
        self.follow: Callable[[ServerStatus], None] | None = None
        self.embedded: ServerStatus | None = None  # arrived before follow was set
        self.sessions: BrowserSessions | None = None
        self.activity: ActivitySource | None = None
        self.pool: UpstreamPool | None = None
        self.probed: msg.Probed | None = None  # the supervisor's latest probe of the upstreams
        self.keys: msg.Keys | None = None  # the node's API keys, latest first arrived
        self.authorizer: Authorizer | None = None  # the app's, once it serves
        self._reloading: set[asyncio.Task[None]] = set()
        # The fog's members as the supervisor's membership service found them,
        # and the node's drain flag (both the supervisor's).
        self.fog: FogPeers | None = None
        self.drain: Drain | None = None
        table = (
            Table()
            .call(msg.Expose, self.expose)
            .call(msg.WorkerActivity, self.activity_here)
            .notice(msg.ReloadTls, self.reload_tls)
            .notice(msg.Revoke, self.revoke)
            .notice(msg.Probed, self.take_probed)
            .notice(msg.EmbeddedChanged, self.embedded_changed)
            .notice(msg.FogMembers, self.take_fog)
            .notice(msg.Draining, self.take_drain)
            .notice(msg.Keys, self.take_keys)
        )
        self.peer = Peer(table)

    def wire(
        self,
        app: web.Application,
        pool: UpstreamPool,
        tls: TlsTerminator | None,
        welcome: msg.Welcome,
    ) -> None:
        """The app, before it serves: what the supervisor knows (``welcome``)
        and tells from now on reaches it, and what must be the node's (its
        metrics, its activity, its drain flag, its fog) asks the supervisor."""
        self.follow = follow_upstream_choice(
            pool, welcome.choice, self.embedded or welcome.embedded
        )
        self.metrics = app[METRICS]
        self.metrics.node_exposition = self._node_metrics
        self.tls = tls
        if welcome.probed is not None:
            self.take_probed(welcome.probed)
        if welcome.keys is not None:
            self.take_keys(welcome.keys)
        self.pool = pool
        if self.probed is not None:
            pool.follow(self.probed.findings)
        self.drain = app[DRAIN]
        self.take_drain(welcome.drain)
        fog = app.get(FOG)
        if fog is not None and welcome.fog is not None:
            self.fog = fog
            fog.on_failure = self._fog_failed
            self.take_fog(welcome.fog)
        source = app.get(ACTIVITY)
        if source is not None:  # the status page shows the node's activity
            self.activity = source
            source.node_view = self._node_activity
        listening = app.get(LISTENING)
        if listening is not None:  # the supervisor serves the one onboarding page
            listening.onboarding_url = welcome.onboarding

    def serving(self, app: web.Application) -> None:
        """The app has started: a sign-out here holds on every worker, and its
        authorizer (built at start, from the settings) checks the node's keys."""
        sessions = app.get(SESSIONS)
        if sessions is not None:
            self.sessions = sessions
            sessions.signed_out.append(self._signed_out)
        self.authorizer = app[AUTHORIZER]
        if self.keys is not None:
            self.authorizer.use_keys(self.keys.entries)

    async def _node_metrics(self) -> bytes:
        return (await self.peer.call(msg.NodeMetrics())).encode()

    async def _node_activity(self) -> ActivityView:
        assert self.activity is not None
        try:
            return await self.peer.call(msg.NodeActivity())
        except ChannelClosed:
            return self.activity.here()

    async def _signed_out(self, session: str, until: float) -> None:
        with contextlib.suppress(ChannelClosed):  # the node is stopping: no worker serves
            await self.peer.call(msg.SignOut(session, until))

    def _fog_failed(self, address: str, why: str) -> None:
        self.peer.notify(msg.FogFailed(address, why))

    async def fog_state(self) -> PeerState:
        """The node's state, as the supervisor keeps it for the fog's members."""
        return await self.peer.call(msg.FogState())

    async def set_drain(self, draining: bool) -> None:
        """``/admin/drain`` here drains the node: the supervisor holds the flag."""
        self.take_drain(await self.peer.call(msg.SetDrain(draining)))

    def take_fog(self, found: msg.FogMembers) -> None:
        if self.fog is not None:
            self.fog.follow(list(found.members), list(found.candidates))

    def take_drain(self, flag: msg.Draining) -> None:
        if self.drain is not None:
            self.drain.follow(flag.draining, flag.since)

    def take_probed(self, probed: msg.Probed) -> None:
        """A probe's findings, unless a later one arrived first."""
        if not _later(self.probed, probed):
            return
        self.probed = probed
        if self.pool is not None:
            self.pool.follow(probed.findings)

    def take_keys(self, keys: msg.Keys) -> None:
        """The node's API keys, unless later ones arrived first."""
        if not _later(self.keys, keys):
            return
        self.keys = keys
        if self.authorizer is not None:
            self.authorizer.use_keys(keys.entries)

    async def expose(self, call: msg.Expose) -> Reply:
        return call.answer(self.metrics.render().decode() if self.metrics is not None else "")

    async def activity_here(self, call: msg.WorkerActivity) -> Reply:
        if self.activity is None:
            raise Refused("the status page is off")
        return call.answer(self.activity.here())

    def reload_tls(self, notice: msg.ReloadTls) -> None:
        if self.tls is not None:
            task = asyncio.create_task(_reload(self.tls), name="fognode-tls-reload")
            self._reloading.add(task)
            task.add_done_callback(self._reloading.discard)

    def revoke(self, notice: msg.Revoke) -> None:
        if self.sessions is not None:
            self.sessions.signer.refuse(notice.session, notice.until)

    def embedded_changed(self, notice: msg.EmbeddedChanged) -> None:
        if self.follow is not None:
            self.follow(notice.status)
        else:
            self.embedded = notice.status


def _later(held: msg.Probed | msg.Keys | None, arriving: msg.Probed | msg.Keys) -> bool:
    """Whether a numbered notice is newer than the one held: the copy in the
    answer to Hello may be older or newer than a notice received meanwhile."""
    return held is None or arriving.number > held.number


async def probe_upstreams(peer: Peer) -> None:
    """The supervisor probes the upstreams for the node; what it found arrives
    (Probed) before its answer, so the pool follows it when this returns."""
    with contextlib.suppress(ChannelClosed):  # the supervisor is gone: this worker stops
        await peer.call(msg.Probe())


async def start_worker(
    settings: Settings, link: SupervisorLink, sockets: list[socket.socket]
) -> RunningServer:
    """The app on ``sockets``, wired to the supervisor over ``link``."""
    peer = link.peer
    welcome = await peer.call(msg.Hello())
    tls = terminator(settings) if settings.tls else None
    if tls is not None:
        await asyncio.to_thread(tls.load)
    peers = await asyncio.to_thread(peer_tls, settings) if welcome.fog is not None else None
    urls = settings.upstream_urls or [settings.upstream_base]
    pool = UpstreamPool(
        urls,
        upstream_options(settings),
        memory=RemoteAffinityTable(peer),
        probe_elsewhere=partial(probe_upstreams, peer),
    )
    parts = NodeParts(
        admission=RemoteAdmission(peer, settings.max_concurrent_requests),
        pool=pool,
        ledger=RemoteUsageLedger(peer) if settings.usage_accounting else None,
        throttle=RemoteSignInThrottle(peer),
        set_drain=link.set_drain,
        peers=peers,
        fog_state=link.fog_state if peers is not None else None,
    )
    # The status page shows the certificate this worker serves.
    app = create_app(settings, parts, tls=tls)
    link.wire(app, pool, tls, welcome)
    # The fog's peer port is the sockets bound to it (the supervisor fixed its number).
    peer_sockets = [
        s for s in sockets if peers is not None and s.getsockname()[1] == settings.fog_port
    ]
    served = [s for s in sockets if s not in peer_sockets]
    await pool.start()  # no probe: it follows the supervisor's
    try:
        running = await run_app(app, settings, tls, sockets=served, peer_sockets=peer_sockets)
    except BaseException:
        await pool.close()
        raise
    running.stack.push_async_callback(pool.close)
    running.stack.push_async_callback(running.runner.cleanup)  # first: open requests drain
    link.serving(app)
    return running


async def _reload(tls: TlsTerminator) -> None:
    try:
        await asyncio.to_thread(tls.load)
    except CertError as exc:
        log.warning("the certificate files changed but cannot be used yet: %s", exc)
    else:
        log.info("loaded the new server certificate from %s", tls.cert_file)


async def run(settings: Settings, channel_sock: socket.socket, sockets: list[socket.socket]) -> int:
    link = SupervisorLink()
    peer = link.peer
    await asyncio.get_running_loop().create_unix_connection(lambda: peer.channel, sock=channel_sock)
    stop = stop_signals()
    try:
        running = await start_worker(settings, link, sockets)
    except Exception as exc:
        message = startup_failure(exc, settings)
        if message is None:
            raise
        peer.notify(msg.Failed(message))  # the supervisor prints it, once for all workers
        peer.close()
        return 1
    settle_heap()
    peer.notify(msg.Ready(running.app[AUTHORIZER].kinds))
    # This worker's recent time to a first token, for the node's fog state.
    telling = asyncio.create_task(_tell_first_token(peer, running.app[STATS]))
    lost = asyncio.create_task(peer.channel.lost.wait())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        stopping.cancel()
    if peer.channel.lost.is_set():
        log.error("the supervisor is gone; stopping")
    else:
        log.info("shutting down; open requests get %ss to finish", settings.shutdown_timeout)
    telling.cancel()
    await running.stop()
    peer.close()
    return 0


async def _tell_first_token(peer: Peer, stats: GatewayStats) -> None:
    """At most once a second, and only when it changed: the supervisor's state
    for the fog's members averages the workers'."""
    told: float | None = None
    while True:
        await asyncio.sleep(1.0)
        now = stats.first_token
        if now is not None and now != told:
            told = now
            peer.notify(msg.FirstToken(now))


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        sys.exit("usage: python -m fognode.gateway.node.worker PARENT_PID NUMBER CHANNEL_FD FD...")
    parent, number, channel_fd, *listen_fds = (int(arg) for arg in argv)
    die_with_parent(parent)
    settings = pickle.loads(sys.stdin.buffer.read())
    assert isinstance(settings, Settings)
    configure_logging(
        settings.log_level, settings.log_format, settings.access_log, process=f"w{number}"
    )
    channel_sock = socket.socket(fileno=channel_fd)
    sockets = [socket.socket(fileno=fd) for fd in listen_fds]
    code = 0

    async def worker() -> None:
        nonlocal code
        code = await run(settings, channel_sock, sockets)

    with contextlib.suppress(KeyboardInterrupt):
        run_loop(worker(), settings.event_loop)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
