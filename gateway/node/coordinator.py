"""The supervisor's side of the workers' channels: what must be the node's, answered
for every worker, and the views that must be of the whole node.

Each worker has one channel to the supervisor; the messages on it are
protocol.py's. The supervisor holds the node's Admission, its quota ledger
and usage writer, its conversation table and its sign-in throttle, the same
classes as one process holds; each worker reaches them through its
:class:`WorkerLink`, which answers the worker's calls with them.

Admission is the same class and the same semantics as in one process: the
link runs ``Admission.acquire`` for each worker's Acquire, so the caps, the
FIFO queues, the wait limit and the 429/503 answers with Retry-After are
exactly the single process's. A queued client that leaves cancels its call,
which leaves the queue; a worker that dies loses its channel, which gives
back every slot it held and drops every wait it had queued.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from ...auth.api_keys import ApiKeyEntry
from ...embedded.supervisor import ServerStatus
from ...fog.members import CandidateView, Member
from ...fog.state import PeerState
from ...routing.affinity import ConversationMemory
from ...usage.ledger import Reservation, UsageLedger
from ...workers.channel import Refused, Reply
from ...workers.messages import Call, Notice, Peer, Table
from ...workers.processes import WorkerStartError
from ..core.drain import Drain
from ..core.errors import GatewayError
from ..pages.sessions import SignInThrottle
from ..pipeline.admission import Admission, Ticket
from ..telemetry.activity import ActivityView, merged
from ..telemetry.metrics import merge_expositions
from ..upstreams.pool import UpstreamPool
from . import protocol as msg

log = logging.getLogger("fognode.workers")

A = TypeVar("A")
EXPOSE_TIMEOUT = 5.0  # seconds a worker has to hand over its metrics or activity


class Coordinator:
    """The node's parts the workers share, and a link to each worker."""

    def __init__(
        self,
        admission: Admission,
        registry: CollectorRegistry,
        pool: UpstreamPool,
        *,
        choice: str,
        drain: Drain,
        ledger: UsageLedger | None = None,
        throttle: SignInThrottle | None = None,
    ) -> None:
        self.admission = admission
        self.registry = registry  # the supervisor's own series (admission, workers, model)
        # The node's upstream probes and its conversation table (affinity on,
        # several upstreams; None otherwise).
        self.pool = pool
        self.affinity: ConversationMemory | None = pool.affinity
        self.ledger = ledger  # with usage accounting on
        self.throttle = throttle  # with the status page on
        self.drain = drain  # the node's flag: a worker's /admin/drain changes it here
        # The fog (when the node is a member): this node's state as members see
        # it, what to do with a member a worker's request found failing, and
        # each worker's recent time to a first token (the state says it).
        self.fog_state: Callable[[], PeerState] | None = None
        self.fog_failed: Callable[[str, str], None] | None = None
        self.first_tokens: dict[int, float] = {}
        self.links: dict[int, Peer] = {}
        self.auth: str | None = None  # the credentials the workers accept (for mDNS)
        # What a worker learns at Hello; kept current by the methods below.
        self.choice = choice
        self.embedded: ServerStatus | None = None
        self.probed: msg.Probed | None = None
        self.onboarding: str | None = None
        self.fog: msg.FogMembers | None = None  # set when the node is a member
        self.keys: msg.Keys | None = None

    def welcome(self) -> msg.Welcome:
        drain = msg.Draining(self.drain.draining, self.drain.since)
        return msg.Welcome(
            self.choice, self.embedded, self.probed, self.onboarding, drain, self.fog, self.keys
        )

    async def attach(self, number: int) -> tuple[socket.socket, asyncio.Future[None]]:
        """A new channel for worker ``number``: the end the worker inherits, and a
        future that resolves when it serves (WorkerStartError if it cannot)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        link = WorkerLink(self, number, ready)
        try:
            await asyncio.get_running_loop().create_unix_connection(
                lambda: link.peer.channel, sock=ours
            )
        except BaseException:
            ours.close()
            theirs.close()
            raise
        self.links[number] = link.peer
        link.peer.channel.on_lost.append(lambda: self._lost(number, link))
        return theirs, ready

    def _lost(self, number: int, link: WorkerLink) -> None:
        if self.links.get(number) is link.peer:
            del self.links[number]
        if not link.ready.done():
            link.ready.set_exception(WorkerStartError(f"worker {number} closed its channel"))
        # Its leases (slots) were given back and its waits cancelled by the channel.

    def broadcast(self, notice: Notice) -> None:
        for peer in self.links.values():
            peer.notify(notice)

    def embedded_changed(self, status: ServerStatus) -> None:
        self.embedded = status
        self.broadcast(msg.EmbeddedChanged(status))

    def fog_found(self, members: list[Member], candidates: list[CandidateView]) -> None:
        """What the membership service found (node/fog.py): every worker follows."""
        self.fog = msg.FogMembers(tuple(members), tuple(candidates))
        self.broadcast(self.fog)

    async def drain_changed(self, draining: bool) -> None:
        self.broadcast(msg.Draining(draining, self.drain.since))

    def first_token(self) -> float | None:
        """The workers' recent times to a first token, averaged (the fog's state)."""
        times = list(self.first_tokens.values())
        return sum(times) / len(times) if times else None

    def keys_changed(self, entries: tuple[ApiKeyEntry, ...]) -> None:
        """The node's API keys are these now: every worker checks them from the
        notice on, and a worker that starts later gets them at Hello."""
        number = self.keys.number + 1 if self.keys is not None else 1
        self.keys = msg.Keys(number, tuple(entries))
        self.broadcast(self.keys)

    async def probed_now(self) -> None:
        """After each probe of the upstreams here (the pool's ``on_probed``):
        every worker follows what it found."""
        number = self.probed.number + 1 if self.probed is not None else 1
        self.probed = msg.Probed(number, self.pool.findings())
        self.broadcast(self.probed)

    async def gather(self, call: Call[A]) -> list[A]:
        """Every worker's answer to ``call``; a worker that does not answer in
        time, one restarting, say, is left out (logged)."""

        async def ask(peer: Peer) -> A:
            async with asyncio.timeout(EXPOSE_TIMEOUT):
                return await peer.call(call)

        answers = await asyncio.gather(
            *(ask(p) for p in list(self.links.values())), return_exceptions=True
        )
        values = [a for a in answers if not isinstance(a, BaseException)]
        missing = len(answers) - len(values)
        if missing:
            log.warning("%s: %d worker(s) did not answer; theirs is missing", call.op, missing)
        return values

    async def node_metrics(self) -> str:
        """Every worker's exposition and ours, summed."""
        texts = await self.gather(msg.Expose())
        texts.append(generate_latest(self.registry).decode())
        return merge_expositions(texts).decode()

    async def node_activity(self) -> ActivityView:
        """Every worker's activity, summed (the status page's view of the node)."""
        return merged(await self.gather(msg.WorkerActivity()))

    def close(self) -> None:
        for peer in list(self.links.values()):
            peer.close()


class WorkerLink:
    """The supervisor's end of one worker's channel: what it answers, and how."""

    def __init__(self, coordinator: Coordinator, number: int, ready: asyncio.Future[None]):
        self.coordinator = coordinator
        self.number = number
        self.ready = ready
        self.waiting: dict[int, Ticket] = {}  # the worker's name for a wait -> its place
        self.reserved: dict[int, Reservation] = {}  # the worker's name for a request -> its hold
        table = (
            Table()
            .call(msg.Hello, self.hello)
            .call(msg.Acquire, self.acquire, now=self.acquire_now)
            .immediate(msg.TryNow, self.try_now)
            .call(msg.Position, self.position)
            .call(msg.LoadNow, self.load)
            .call(msg.Quota, self.quota)
            .call(msg.Pending, self.pending)
            .call(msg.UsageOf, self.usage_of)
            .call(msg.Warnings, self.warnings)
            .call(msg.NodeMetrics, self.node_metrics)
            .call(msg.NodeActivity, self.node_activity)
            .call(msg.Probe, self.probe)
            .call(msg.Recall, self.recall)
            .call(msg.SignInWait, self.sign_in_wait)
            .call(msg.SignInAttempt, self.sign_in_attempt)
            .call(msg.FogState, self.fog_state)
            .call(msg.SetDrain, self.set_drain)
            .call(msg.SignOut, self.sign_out)
            .notice(msg.Ready, self.serving)
            .notice(msg.Failed, self.failed)
            .notice(msg.Settle, self.settle)
            .notice(msg.Record, self.record)
            .notice(msg.Remember, self.remember)
            .notice(msg.SignedIn, self.signed_in)
            .notice(msg.FogFailed, self.fog_failed)
            .notice(msg.FirstToken, self.first_token)
        )
        self.peer = Peer(table)

    # --- calls ------------------------------------------------------------------------
    async def hello(self, call: msg.Hello) -> Reply:
        return call.answer(self.coordinator.welcome())

    def acquire_now(self, call: msg.Acquire) -> Reply | None:
        """An acquire that finds its slots free is granted in the step that
        reads it (every request of every worker asks: no task for it); one
        that must queue, or be refused, goes to :meth:`acquire`."""
        admission = self.coordinator.admission
        permit = admission.try_acquire(call.uid, call.slots, call.priority)
        if permit is None:
            return None
        return call.lease(msg.Admitted(), release=lambda: admission.release(permit))

    def try_now(self, call: msg.TryNow) -> Reply:
        """Placement in a fog asks before it decides where a request runs: the
        slots now, or the seconds a request would wait for them."""
        admission = self.coordinator.admission
        permit = admission.try_acquire(call.uid, call.slots, call.priority)
        if permit is None:
            return call.answer(msg.Tried(admission.expected_wait(call.priority)))
        return call.lease(msg.Tried(None), release=lambda: admission.release(permit))

    async def acquire(self, call: msg.Acquire) -> Reply:
        admission = self.coordinator.admission
        ticket = self.waiting[call.wait] = Ticket()
        try:
            permit = await admission.acquire(call.uid, ticket, call.slots, call.priority)
        except GatewayError as exc:
            return call.answer(msg.Admitted(msg.Refusal.of(exc)))
        finally:
            self.waiting.pop(call.wait, None)
        return call.lease(msg.Admitted(), release=lambda: admission.release(permit))

    async def position(self, call: msg.Position) -> Reply:
        ticket = self.waiting.get(call.wait)
        place = await self.coordinator.admission.position(ticket) if ticket else None
        return call.answer(place)

    async def load(self, call: msg.LoadNow) -> Reply:
        return call.answer(await self.coordinator.admission.load())

    async def quota(self, call: msg.Quota) -> Reply:
        ledger = self._ledger()
        reservation = await ledger.admit(call.uid, call.limits, estimate=call.estimate)
        decided = msg.Decided(reservation.started_at, reservation.decision)
        if not reservation.decision.allowed:
            return call.answer(decided)
        self.reserved[call.request] = reservation

        def release() -> None:  # after Settle: nothing left; a dead worker: no record
            left = self.reserved.pop(call.request, None)
            if left is not None:
                ledger.drop(left)

        return call.lease(decided, release)

    async def pending(self, call: msg.Pending) -> Reply:
        return call.answer(await self._ledger().pending_records())

    async def usage_of(self, call: msg.UsageOf) -> Reply:
        return call.answer(await self._ledger().usage(call.uid))

    async def warnings(self, call: msg.Warnings) -> Reply:
        return call.answer(await self._ledger().warnings())

    async def node_metrics(self, call: msg.NodeMetrics) -> Reply:
        return call.answer(await self.coordinator.node_metrics())

    async def node_activity(self, call: msg.NodeActivity) -> Reply:
        return call.answer(await self.coordinator.node_activity())

    async def probe(self, call: msg.Probe) -> Reply:
        await self.coordinator.pool.refresh()  # its findings are sent before this answer
        return call.answer(None)

    async def recall(self, call: msg.Recall) -> Reply:
        return call.answer(await self._affinity().recall(call.lookups))

    async def sign_in_wait(self, call: msg.SignInWait) -> Reply:
        return call.answer(await self._throttle().retry_after(call.client))

    async def sign_in_attempt(self, call: msg.SignInAttempt) -> Reply:
        await self._throttle().attempt(call.client)
        return call.answer(None)

    async def fog_state(self, call: msg.FogState) -> Reply:
        if self.coordinator.fog_state is None:
            raise Refused("the node is no member of a fog")
        return call.answer(self.coordinator.fog_state())

    async def set_drain(self, call: msg.SetDrain) -> Reply:
        drain = self.coordinator.drain
        await drain.set(call.draining)  # every worker is told (Draining)
        return call.answer(msg.Draining(drain.draining, drain.since))

    async def sign_out(self, call: msg.SignOut) -> Reply:
        """Every worker is told before the worker that asked answers its client:
        the Revoke frames are written ahead of this answer, so each worker reads
        its own before that client can come back to it."""
        self.coordinator.broadcast(msg.Revoke(call.session, call.until))
        return call.answer(None)

    # --- notices ----------------------------------------------------------------------
    def serving(self, notice: msg.Ready) -> None:
        self.coordinator.auth = notice.auth
        if not self.ready.done():
            self.ready.set_result(None)

    def failed(self, notice: msg.Failed) -> None:
        if not self.ready.done():
            self.ready.set_exception(WorkerStartError(notice.message))

    def settle(self, notice: msg.Settle) -> None:
        reservation = self.reserved.pop(notice.request, None)
        if reservation is not None:
            self._ledger().settle(reservation, notice.record)

    def record(self, notice: msg.Record) -> None:
        self._ledger().record(notice.record)

    def remember(self, notice: msg.Remember) -> None:
        self._affinity().remember(notice.key, notice.upstream)

    def signed_in(self, notice: msg.SignedIn) -> None:
        self._throttle().succeeded(notice.client)

    def fog_failed(self, notice: msg.FogFailed) -> None:
        if self.coordinator.fog_failed is not None:
            self.coordinator.fog_failed(notice.address, notice.why)

    def first_token(self, notice: msg.FirstToken) -> None:
        self.coordinator.first_tokens[self.number] = notice.seconds

    # --- what this node may not run -----------------------------------------------------
    def _ledger(self) -> UsageLedger:
        if self.coordinator.ledger is None:
            raise Refused("usage accounting is off")
        return self.coordinator.ledger

    def _affinity(self) -> ConversationMemory:
        if self.coordinator.affinity is None:
            raise Refused("conversation affinity is off")
        return self.coordinator.affinity

    def _throttle(self) -> SignInThrottle:
        if self.coordinator.throttle is None:
            raise Refused("the status page is off")
        return self.coordinator.throttle
