"""The supervisor's side of the workers' channels: one Admission for the node,
and the views that must be of the whole node.

Each worker process has one channel to the supervisor (workers/channel.py,
over a socketpair made for it). On it the worker calls:

    hello          what the worker needs to know at start (the upstream choice,
                   the embedded model's state)
    acquire K UID SLOTS
                   a slot for user UID (K: the worker's key for this wait; SLOTS:
                   both, the user's only, the node's only: admission.Slots): the
                   answer is ``granted``, a lease given back when the request
                   ends, or ``refused`` with the GatewayError admission raised
    try UID SLOTS  the same, never waiting: ``granted`` (a lease), or ``wait``
                   with the seconds a request would wait (placement in a fog)
    position K     where wait K is in the queue (for the ``: queued N`` heartbeat)
    load           the node's slots in use and requests waiting (the status page)
    quota K UID TOKENS RPM ESTIMATE
                   the node's quota ledger decides on a request (K: the worker's
                   key for it): ``[decision]``, and when allowed the reservation
                   is a lease, ended by ``settle`` or, should the worker die, by
                   the channel dropping
    pending        records the node's usage writer holds, not yet stored
    metrics        the whole node's exposition (every worker's, summed, and ours)
    activity       the node's activity for the status page (every worker's, summed)
    check          check the upstreams now (a model pulled or removed through the
                   worker, /readyz): answered once what was found is sent
    recall KEY...  the upstream that served a conversation last (the node's
                   affinity table; only with affinity on and several upstreams)
    signin_wait C  seconds before client C may try to sign in again (the
                   node's sign-in throttle)
    signin_attempt C
                   client C tries to sign in: counted before its credential is checked
    fog_state      this node's state as the fog's members are told it (a worker
                   answers /fog/state on the peer port with it)
    drain ON       drain the node (or stop): answered with the flag as it now is

and tells (notices): ``settle K RECORD`` (request K ended: its record
replaces its reservation), ``record RECORD`` (a request that held none),
``remember KEY UPSTREAM`` (an upstream served a conversation), ``signin_ok
C`` (client C signed in: its failures are forgotten), ``fog_failed ADDRESS
WHY`` (a request to a member failed before its first byte), ``first_token
SECONDS`` (the worker's recent time to a first token, at most once a second),
``revoke SID UNTIL`` (a sign-out from the status page, passed on to
every worker as ``revoke``), ``ready`` (it serves; with the kinds of credentials
it accepts, for the announcement), ``failed`` (it cannot start, and
why). The supervisor calls ``expose`` and ``activity``
on each worker to gather metrics and the status page's activity, and tells
all of them ``tls`` (certificate files changed: load them) and ``embedded``
(the model's new state) and ``checked`` (what its check of the upstreams
found: the workers check none themselves, so the node probes each upstream
once), ``fog`` (what its membership service found: the members and every
candidate) and ``drain`` (the node's drain flag changed).

Admission is the same class and the same semantics as in one process: the
coordinator runs ``Admission.acquire`` for each worker's call, so the caps,
the FIFO queues, the wait limit and the 429/503 answers with Retry-After
are exactly the single process's. A queued client that leaves cancels its
call, which leaves the queue; a worker that dies loses its channel, which
gives back every slot it held and drops every wait it had queued.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from ...auth.throttle import FailureThrottle
from ...fog.state import PeerState
from ...routing.affinity import ConversationMemory
from ...usage.ledger import Ticket as QuotaTicket
from ...usage.ledger import UsageLedger
from ...usage.options import Limits
from ...usage.record import UsageRecord
from ...workers.channel import Answer, Channel, Reply
from ...workers.processes import WorkerStartError
from ..core.drain import Drain
from ..core.errors import GatewayError
from ..pipeline.admission import Admission, Slots, Ticket
from ..telemetry.activity import ActivityView, merged
from ..telemetry.metrics import merge_expositions

log = logging.getLogger("fognode.workers")

GRANTED, REFUSED, WAIT = "granted", "refused", "wait"
EXPOSE_TIMEOUT = 5.0  # seconds a worker has to hand over its metrics or activity


class Coordinator:
    def __init__(
        self,
        admission: Admission,
        registry: CollectorRegistry,
        ledger: UsageLedger | None = None,
    ) -> None:
        self.admission = admission
        # The node's quota ledger and usage writer (with usage accounting on).
        self.ledger = ledger
        self.registry = registry  # the supervisor's own series (admission, workers, model)
        self.links: dict[int, Channel] = {}
        # What every worker gets at hello; the supervisor keeps it current.
        self.hello: dict[str, Any] = {}
        # Checks the upstreams now (the supervisor's pool), for a worker that asks.
        self.check: Callable[[], Awaitable[None]] | None = None
        self.auth: str | None = None  # the credentials the workers accept (for mDNS)
        # The node's conversation table (affinity on, several upstreams) and
        # sign-in throttle (status page on); None when not in use.
        self.affinity: ConversationMemory | None = None
        self.throttle: FailureThrottle | None = None
        # The fog (when the node is a member): this node's state as members see
        # it, what to do with a member a worker's request found failing, and
        # each worker's recent time to a first token (the state says it).
        self.fog_state: Callable[[], PeerState] | None = None
        self.fog_failed: Callable[[str, str], None] | None = None
        self.first_tokens: dict[int, float] = {}
        # The node's drain flag: a worker's /admin/drain changes it here.
        self.drain: Drain | None = None

    async def attach(self, number: int) -> tuple[socket.socket, asyncio.Future[None]]:
        """A new channel for worker ``number``: the end the worker inherits, and a
        future that resolves when it serves (WorkerStartError if it cannot)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        link = _Link(self, number, ready)
        channel = Channel(serve=link.serve, notice=link.notice, serve_now=link.serve_now)
        try:
            await asyncio.get_running_loop().create_unix_connection(lambda: channel, sock=ours)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        self.links[number] = channel
        channel.on_lost.append(lambda: self._lost(number, channel, ready))
        return theirs, ready

    def _lost(self, number: int, channel: Channel, ready: asyncio.Future[None]) -> None:
        if self.links.get(number) is channel:
            del self.links[number]
        if not ready.done():
            ready.set_exception(WorkerStartError(f"worker {number} closed its channel"))
        # Its leases (slots) were given back and its waits cancelled by the channel.

    def broadcast(self, op: str, *args: Any) -> None:
        for channel in self.links.values():
            channel.notify(op, *args)

    async def gather(self, op: str) -> list[Any]:
        """Every worker's answer to ``op`` (its first value); a worker that does
        not answer in time, one restarting, say, is left out (logged)."""

        async def ask(channel: Channel) -> Answer:
            async with asyncio.timeout(EXPOSE_TIMEOUT):
                return await channel.call(op)

        answers = await asyncio.gather(
            *(ask(c) for c in list(self.links.values())), return_exceptions=True
        )
        values = [a.values[0] for a in answers if isinstance(a, Answer)]
        missing = len(answers) - len(values)
        if missing:
            log.warning("%s: %d worker(s) did not answer; theirs is missing", op, missing)
        return values

    async def node_metrics(self) -> str:
        """Every worker's exposition and ours, summed."""
        texts = [str(text) for text in await self.gather("expose")]
        texts.append(generate_latest(self.registry).decode())
        return merge_expositions(texts).decode()

    async def node_activity(self) -> ActivityView:
        """Every worker's activity, summed (the status page's view of the node)."""
        return merged([ActivityView.from_json(v) for v in await self.gather("activity")])

    def close(self) -> None:
        for channel in list(self.links.values()):
            channel.close()


class _Link:
    """What one worker's channel serves."""

    def __init__(self, coordinator: Coordinator, number: int, ready: asyncio.Future[None]):
        self.coordinator = coordinator
        self.number = number
        self.ready = ready
        self.waiting: dict[int, Ticket] = {}  # the worker's key -> its place in the queues
        self.reserved: dict[int, QuotaTicket] = {}  # the worker's key -> its reservation

    def serve_now(self, op: str, args: list[Any]) -> Reply | None:
        """An acquire that finds its slots free is granted in the step that
        reads it (every request of every worker asks: no task for it); one
        that must queue, or be refused, goes to :meth:`serve`. A ``try``
        (placement in a fog) is always answered at once: the slots, or the
        seconds a request would wait for them."""
        admission = self.coordinator.admission
        if op == "try":
            permit = admission.try_acquire(str(args[0]), Slots(args[1]))
            if permit is None:
                return Reply([WAIT, admission.expected_wait()])
        elif op == "acquire":
            permit = admission.try_acquire(str(args[1]), _slots(args))
            if permit is None:
                return None
        else:
            return None
        granted = permit
        return Reply([GRANTED], release=lambda: admission.release(granted))

    async def serve(self, op: str, args: list[Any]) -> Reply:
        if op == "acquire":
            key, uid = int(args[0]), str(args[1])
            return await self.acquire(key, uid, _slots(args))
        if op == "position":
            ticket = self.waiting.get(int(args[0]))
            place = await self.coordinator.admission.position(ticket) if ticket else None
            return Reply([place])
        if op == "load":
            load = await self.coordinator.admission.load()
            return Reply([load.active, load.queued])
        if op == "metrics":
            return Reply([await self.coordinator.node_metrics()])
        if op == "quota":
            key, uid, tokens, rpm, estimate = args
            return await self.quota(
                int(key), str(uid), Limits(int(tokens), int(rpm)), int(estimate)
            )
        if op == "pending":
            return Reply([await self._ledger().pending_records()])
        if op == "hello":
            return Reply([self.coordinator.hello])
        if op == "check":
            if self.coordinator.check is not None:
                await self.coordinator.check()
            return Reply([])
        if op == "activity":
            return Reply([(await self.coordinator.node_activity()).as_json()])
        if op == "recall":
            memory = self._affinity()
            return Reply([await memory.recall([bytes.fromhex(str(key)) for key in args])])
        if op == "signin_wait":
            return Reply([self._throttle().retry_after(str(args[0]))])
        if op == "signin_attempt":
            self._throttle().attempt(str(args[0]))
            return Reply([])
        if op == "fog_state":
            if self.coordinator.fog_state is None:
                raise RuntimeError("the node is no member of a fog")
            return Reply([self.coordinator.fog_state().as_dict()])
        if op == "drain":
            drain = self.coordinator.drain
            if drain is None:
                raise RuntimeError("the supervisor holds no drain flag")
            await drain.set(bool(args[0]))
            return Reply([drain.draining, drain.since])
        raise ValueError(f"unknown call {op!r}")

    def _affinity(self) -> ConversationMemory:
        if self.coordinator.affinity is None:
            raise RuntimeError("conversation affinity is off")
        return self.coordinator.affinity

    def _throttle(self) -> FailureThrottle:
        if self.coordinator.throttle is None:
            raise RuntimeError("the status page is off")
        return self.coordinator.throttle

    async def acquire(self, key: int, uid: str, slots: Slots) -> Reply:
        admission = self.coordinator.admission
        ticket = self.waiting[key] = Ticket()
        try:
            permit = await admission.acquire(uid, ticket, slots)
        except GatewayError as exc:
            return Reply([REFUSED, exc.status, exc.message, exc.type, exc.code, exc.headers])
        finally:
            self.waiting.pop(key, None)
        return Reply([GRANTED], release=lambda: admission.release(permit))

    def _ledger(self) -> UsageLedger:
        if self.coordinator.ledger is None:
            raise RuntimeError("usage accounting is off")
        return self.coordinator.ledger

    async def quota(self, key: int, uid: str, limits: Limits, estimate: int) -> Reply:
        ledger = self._ledger()
        ticket = await ledger.admit(uid, limits, estimate=estimate)
        answer = [ticket.started_at, ticket.decision.as_json()]
        if not ticket.decision.allowed:
            return Reply(answer)
        self.reserved[key] = ticket

        def release() -> None:  # after settle: nothing left; a dead worker: no record
            left = self.reserved.pop(key, None)
            if left is not None:
                ledger.drop(left)

        return Reply(answer, release=release)

    def notice(self, op: str, args: list[Any]) -> None:
        if op == "settle":
            ticket = self.reserved.pop(int(args[0]), None)
            if ticket is not None:
                self._ledger().settle(ticket, UsageRecord.from_json(args[1]))
        elif op == "record":
            self._ledger().record(UsageRecord.from_json(args[0]))
        elif op == "remember":
            self._affinity().remember(bytes.fromhex(str(args[0])), int(args[1]))
        elif op == "signin_ok":
            self._throttle().succeeded(str(args[0]))
        elif op == "fog_failed":
            if self.coordinator.fog_failed is not None:
                self.coordinator.fog_failed(str(args[0]), str(args[1]))
        elif op == "first_token":
            self.coordinator.first_tokens[self.number] = float(args[0])
        elif op == "revoke":  # a sign-out: every worker refuses the session from now on
            self.coordinator.broadcast("revoke", *args)
        elif op == "ready":
            self.coordinator.auth = str(args[0]) if args else None
            if not self.ready.done():
                self.ready.set_result(None)
        elif op == "failed":
            if not self.ready.done():
                self.ready.set_exception(WorkerStartError(str(args[0])))
        else:
            log.warning("worker %d sent an unknown notice %r", self.number, op)


def _slots(args: list[Any]) -> Slots:
    """An acquire's slots (a worker of before the fog sent none: both)."""
    return Slots(args[2]) if len(args) > 2 else Slots.BOTH


def refused(values: list[Any]) -> GatewayError:
    """The GatewayError a ``refused`` answer carries, as admission raised it."""
    status, message, kind, code, headers = values[1:6]
    return GatewayError(int(status), str(message), type=kind, code=code, headers=dict(headers))
