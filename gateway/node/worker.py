"""One worker process: the app on its share of the node's port, admitted by the supervisor.

The supervisor (supervisor.py) starts ``python -m fognode.gateway.node.worker
PARENT_PID NUMBER CHANNEL_FD LISTEN_FD...`` and writes the settings to its
stdin, pickled: an exact copy of the supervisor's settings (the upstream it
chose, secrets included, which no command line or environment would carry
as privately), through a pipe only the supervisor holds. The descriptors
are inherited: the worker's end of its channel to the supervisor and the
sockets it listens on.

The worker runs the same app as a single process, except that what must
be the node's is the supervisor's, asked over the channel: admission
(:class:`RemoteAdmission`), the quota ledger, which also writes the usage
records (:class:`RemoteLedger`), the conversation affinity table
(:class:`RemoteMemory`), the status page's sign-in throttle
(:class:`RemoteThrottle`); /metrics and the status page's activity are the
whole node's, gathered by the supervisor from every worker; and the
certificate files are reloaded when the supervisor says they changed (it
alone renews them). It
dies with the supervisor (PR_SET_PDEATHSIG), and stops when its channel
closes, which only happens when the supervisor is gone.
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
from typing import Any

from ...certs.errors import CertError
from ...embedded.supervisor import ServerStatus
from ...fog.members import CandidateView, Member
from ...fog.state import PeerState
from ...supervision import die_with_parent
from ...usage.ledger import Ticket as QuotaTicket
from ...usage.options import Limits
from ...usage.quota import ALLOW_UNLIMITED, Decision
from ...usage.record import UsageRecord
from ...workers.channel import Channel, ChannelClosed, Reply
from ..app import create_app
from ..config.settings import Settings
from ..core.drain import DRAIN, Drain
from ..core.errors import GatewayError
from ..options import peer_tls, terminator
from ..pages.sessions import SESSIONS, BrowserSessions
from ..pages.status import ACTIVITY, LISTENING, ActivitySource
from ..pipeline.access import AUTHORIZER
from ..pipeline.admission import Load, Slots, Ticket
from ..telemetry.activity import ActivityView
from ..telemetry.logs import configure_logging
from ..telemetry.metrics import METRICS, Metrics
from ..telemetry.stats import STATS, GatewayStats
from ..transport.tls import TlsTerminator
from ..upstreams.choice import follow_upstream_choice
from ..upstreams.peers import FOG, FogPeers
from ..upstreams.pool import UPSTREAM, UpstreamPool
from .coordinator import GRANTED, refused
from .serve import run_loop, startup_failure
from .server import RunningServer, run_app, settle_heap, stop_signals

log = logging.getLogger("fognode.workers")


@dataclass(frozen=True, slots=True)
class RemotePermit:
    lease: int  # the channel call that granted the slot


class RemoteAdmission:
    """Admission as the stage sees it, answered by the supervisor's Admission.

    One round trip per admitted request (acquire; the release needs no
    answer), multiplexed with every other request on the worker's one
    channel. A request whose client leaves while it waits cancels its call,
    and so its place in the queue. Only what the stage needs is here: the
    node's live counts are the supervisor's, in /metrics.
    """

    def __init__(self, channel: Channel, capacity: int) -> None:
        self.channel = channel
        self._capacity = capacity
        self._keys = itertools.count(1)
        self._waiting: dict[Ticket, int] = {}

    @property
    def capacity(self) -> int:
        return self._capacity

    async def acquire(
        self, uid: str, ticket: Ticket | None = None, slots: Slots = Slots.BOTH
    ) -> RemotePermit:
        key = next(self._keys)
        if ticket is not None:
            self._waiting[ticket] = key
        try:
            answer = await self.channel.call("acquire", key, uid, slots.value)
        except ChannelClosed:
            raise _restarting() from None
        finally:
            if ticket is not None:
                self._waiting.pop(ticket, None)
        if answer.values[0] == GRANTED:
            return RemotePermit(answer.id)
        raise refused(answer.values)

    async def try_now(self, uid: str, slots: Slots = Slots.BOTH) -> RemotePermit | float:
        """One round trip, answered in the step that reads it: the slots, or
        the seconds a request would wait for them."""
        try:
            answer = await self.channel.call("try", uid, slots.value)
        except ChannelClosed:
            raise _restarting() from None
        if answer.values[0] == GRANTED:
            return RemotePermit(answer.id)
        return float(answer.values[1])

    def release(self, permit: RemotePermit) -> None:
        self.channel.done(permit.lease)

    async def load(self) -> Load:
        try:
            answer = await self.channel.call("load")
        except ChannelClosed:
            return Load(0, 0)
        return Load(int(answer.values[0]), int(answer.values[1]))

    async def position(self, ticket: Ticket) -> int | None:
        key = self._waiting.get(ticket)
        if key is None:
            return None
        try:
            answer = await self.channel.call("position", key)
        except ChannelClosed:
            return None
        place = answer.values[0]
        return int(place) if place is not None else None


class RemoteLedger:
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

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._keys = itertools.count(1)
        self._leases: dict[QuotaTicket, tuple[int, int]] = {}  # ticket -> (key, lease)

    async def admit(self, uid: str, limits: Limits, *, estimate: int) -> QuotaTicket:
        if limits.unlimited:
            return QuotaTicket(uid, estimate, time.time(), ALLOW_UNLIMITED)
        key = next(self._keys)
        answer = await self.channel.call(
            "quota", key, uid, limits.tokens_per_day, limits.requests_per_minute, estimate
        )
        started_at, decision = float(answer.values[0]), Decision.from_json(answer.values[1])
        ticket = QuotaTicket(uid, estimate, started_at, decision, settled=not decision.allowed)
        if decision.allowed:
            self._leases[ticket] = (key, answer.id)
        return ticket

    def settle(self, ticket: QuotaTicket, record: UsageRecord) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        lease = self._leases.pop(ticket, None)
        if lease is None:  # no limits: nothing reserved
            self.record(record)
            return
        key, ident = lease
        self.channel.notify("settle", key, record.as_json())
        self.channel.done(ident)

    def record(self, record: UsageRecord) -> None:
        self.channel.notify("record", record.as_json())

    async def pending_records(self) -> int:
        return int((await self.channel.call("pending")).values[0])


def _restarting() -> GatewayError:
    return GatewayError(
        503,
        "This node is restarting a process; retry in a moment.",
        code="node_restarting",
        headers={"Retry-After": "1"},
    )


class RemoteMemory:
    """The node's conversation table (routing/affinity.py), in the supervisor.

    Asked only for a conversation's later turns (a first turn looks up
    nothing), and only with affinity on and several upstreams; what served a
    turn is told, with no answer awaited.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def recall(self, lookups: Sequence[bytes]) -> int | None:
        try:
            answer = await self.channel.call("recall", *(key.hex() for key in lookups))
        except ChannelClosed:
            return None  # routed as a new conversation
        found = answer.values[0]
        return int(found) if found is not None else None

    def remember(self, key: bytes, upstream: int) -> None:
        self.channel.notify("remember", key.hex(), upstream)


class RemoteThrottle:
    """The node's sign-in throttle (auth/throttle.py), in the supervisor: one
    round trip to look, one to count an attempt (sign-ins are rare)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    async def retry_after(self, client: str) -> float:
        try:
            return float((await self.channel.call("signin_wait", client)).values[0])
        except ChannelClosed:
            raise _restarting() from None

    async def attempt(self, client: str) -> None:
        try:
            await self.channel.call("signin_attempt", client)
        except ChannelClosed:
            raise _restarting() from None

    def succeeded(self, client: str) -> None:
        self.channel.notify("signin_ok", client)


class SupervisorCalls:
    """What the supervisor asks of this worker and tells it, over the channel.

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
        # The supervisor's latest check of the upstreams (its number, its findings).
        self.checked: tuple[int, list[dict[str, Any]]] | None = None
        self._reloading: set[asyncio.Task[None]] = set()
        # The fog's members as the supervisor's membership service found them,
        # and the node's drain flag (both the supervisor's).
        self.fog: FogPeers | None = None
        self.drain: Drain | None = None

    def take_fog(self, members: list[Any], candidates: list[Any]) -> None:
        if self.fog is not None:
            self.fog.follow(
                [Member.from_json(m) for m in members],
                [CandidateView.from_json(c) for c in candidates],
            )

    def take_drain(self, draining: Any, since: Any) -> None:
        if self.drain is not None:
            self.drain.follow(bool(draining), float(since) if since is not None else None)

    def take_checked(self, number: int, findings: list[dict[str, Any]]) -> None:
        """A check's findings, unless a later one arrived first (the one in the
        answer to hello may be older or newer than a notice received meanwhile)."""
        if self.checked is not None and number <= self.checked[0]:
            return
        self.checked = (number, findings)
        if self.pool is not None:
            self.pool.follow(findings)

    async def serve(self, op: str, args: list[Any]) -> Reply:
        if op == "expose":
            return Reply([self.metrics.render().decode() if self.metrics is not None else ""])
        if op == "activity" and self.activity is not None:
            return Reply([self.activity.here().as_json()])
        raise ValueError(f"unknown call {op!r}")

    def notice(self, op: str, args: list[Any]) -> None:
        if op == "tls" and self.tls is not None:
            task = asyncio.create_task(_reload(self.tls), name="fognode-tls-reload")
            self._reloading.add(task)
            task.add_done_callback(self._reloading.discard)
        elif op == "revoke" and self.sessions is not None:
            self.sessions.signer.refuse(str(args[0]), float(args[1]))
        elif op == "checked":
            self.take_checked(int(args[0]), args[1])
        elif op == "fog":
            self.take_fog(args[0], args[1])
        elif op == "drain":
            self.take_drain(args[0], args[1])
        elif op == "embedded":
            status = ServerStatus.from_json(args[0])
            if self.follow is not None:
                self.follow(status)
            else:
                self.embedded = status


async def check_upstreams(channel: Channel) -> None:
    """The supervisor checks the upstreams for the node; what it found arrives
    (``checked``) before its answer, so the pool follows it when this returns."""
    with contextlib.suppress(ChannelClosed):  # the supervisor is gone: this worker stops
        await channel.call("check")


async def start_worker(
    settings: Settings, channel: Channel, calls: SupervisorCalls, sockets: list[socket.socket]
) -> RunningServer:
    """The app on ``sockets``, wired to the supervisor over ``channel``."""
    hello: dict[str, Any] = (await channel.call("hello")).values[0]
    tls = terminator(settings) if settings.tls else None
    if tls is not None:
        await asyncio.to_thread(tls.load)
    peers = await asyncio.to_thread(peer_tls, settings) if "fog" in hello else None

    async def fog_state() -> PeerState:
        return PeerState.from_dict((await channel.call("fog_state")).values[0])

    async def set_drain(draining: bool) -> None:
        answer = await channel.call("drain", draining)
        calls.take_drain(*answer.values)

    app = create_app(
        settings,
        admission=RemoteAdmission(channel, settings.max_concurrent_requests),
        ledger=RemoteLedger(channel) if settings.usage_accounting else None,
        memory=RemoteMemory(channel),
        throttle=RemoteThrottle(channel),
        checks=partial(check_upstreams, channel),
        peers=peers,
        fog_state=fog_state if peers is not None else None,
        set_drain=set_drain,
    )
    calls.drain = app[DRAIN]
    calls.take_drain(*hello["drain"])
    fog = app.get(FOG)
    if fog is not None:
        calls.fog = fog
        fog.on_failure = partial(channel.notify, "fog_failed")
        calls.take_fog(*hello["fog"])
    status = calls.embedded
    if status is None and hello["embedded"] is not None:
        status = ServerStatus.from_json(hello["embedded"])
    calls.follow = follow_upstream_choice(app, str(hello["choice"]), status)
    calls.metrics = metrics = app[METRICS]
    calls.tls = tls

    async def node_metrics() -> bytes:
        return str((await channel.call("metrics")).values[0]).encode()

    metrics.node = node_metrics
    pool = app[UPSTREAM]
    calls.take_checked(*hello["checked"])
    calls.pool = pool
    if calls.checked is not None:
        pool.follow(calls.checked[1])

    source = app.get(ACTIVITY)
    if source is not None:  # the status page shows the node's activity
        calls.activity = here = source

        async def node_activity() -> ActivityView:
            try:
                return ActivityView.from_json((await channel.call("activity")).values[0])
            except ChannelClosed:
                return here.here()

        source.node = node_activity
    # The fog's peer port is the sockets bound to it (the supervisor fixed its number).
    peer_sockets = [
        s for s in sockets if fog is not None and s.getsockname()[1] == settings.fog_port
    ]
    served = [s for s in sockets if s not in peer_sockets]
    running = await run_app(
        app, settings, tls, sockets=served, peer_sockets=peer_sockets, onboarding=False
    )
    sessions = app.get(SESSIONS)
    if sessions is not None:  # a sign-out here holds on every worker
        calls.sessions = sessions
        sessions.signer.on_revoke.append(partial(channel.notify, "revoke"))
    listening = app.get(LISTENING)
    if listening is not None:  # the supervisor serves the one onboarding page
        listening.onboarding_url = hello.get("onboarding")
    return running


async def _reload(tls: TlsTerminator) -> None:
    try:
        await asyncio.to_thread(tls.load)
    except CertError as exc:
        log.warning("the certificate files changed but cannot be used yet: %s", exc)
    else:
        log.info("loaded the new server certificate from %s", tls.cert_file)


async def run(settings: Settings, channel_sock: socket.socket, sockets: list[socket.socket]) -> int:
    calls = SupervisorCalls()
    channel = Channel(serve=calls.serve, notice=calls.notice)
    await asyncio.get_running_loop().create_unix_connection(lambda: channel, sock=channel_sock)
    stop = stop_signals()
    try:
        running = await start_worker(settings, channel, calls, sockets)
    except Exception as exc:
        message = startup_failure(exc, settings)
        if message is None:
            raise
        channel.notify("failed", message)  # the supervisor prints it, once for all workers
        channel.close()
        return 1
    settle_heap()
    channel.notify("ready", running.app[AUTHORIZER].kinds)
    # This worker's recent time to a first token, for the node's fog state.
    telling = asyncio.create_task(_tell_first_token(channel, running.app[STATS]))
    lost = asyncio.create_task(channel.lost.wait())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        stopping.cancel()
    if channel.lost.is_set():
        log.error("the supervisor is gone; stopping")
    else:
        log.info("shutting down; open requests get %ss to finish", settings.shutdown_timeout)
    telling.cancel()
    await running.stop()
    channel.close()
    return 0


async def _tell_first_token(channel: Channel, stats: GatewayStats) -> None:
    """At most once a second, and only when it changed: the supervisor's state
    for the fog's members averages the workers'."""
    told: float | None = None
    while True:
        await asyncio.sleep(1.0)
        now = stats.first_token
        if now is not None and now != told:
            told = now
            channel.notify("first_token", now)


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
