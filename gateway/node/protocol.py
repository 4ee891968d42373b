"""The node's protocol: every message between the supervisor and a worker, declared once.

Each worker process has one channel to the supervisor (workers/channel.py,
over a socketpair made for it). What crosses it is declared here and only
here: one frozen dataclass per message, its fields its arguments, named on
the wire by its :class:`Op`; a call declares its answer's type with it
(``Call[Answer]``). workers/messages.py derives the wire form from these
declarations and checks what arrives against them; each side dispatches
what it receives through a table, message class -> handler: the
supervisor's :class:`~.coordinator.WorkerLink`, one per worker, and the
worker's :class:`~.worker.SupervisorLink`. The local and remote pairs that
make a worker's app behave as the node's are in worker.py.

A worker asks the supervisor (calls):

    Hello          what a worker needs to know at start: the upstream choice, the
                   embedded model's state, the latest probe, the onboarding page,
                   the drain flag, the fog's members
    Acquire        slots for a user (admission; the user's, the node's or both), in
                   the queue of the request's priority class: granted, a lease
                   given back when the request ends, or refused with what
                   admission raised
    TryNow         the same, never waiting: granted (a lease), or the seconds a
                   request would wait (placement in a fog)
    Position       where a waiting request is in the queue (``: queued N``)
    LoadNow        the node's slots in use and requests waiting, by class (the
                   status page)
    Quota          the node's quota ledger decides on a request: when allowed, the
                   reservation is a lease, ended by Settle or the channel dropping
    Pending        records the node's usage writer holds, not yet stored
    UsageOf        what a user has used now, by the node's quota ledger (stored,
                   not yet stored, reserved): GET /v1/fognode/usage
    Warnings       who is past the warning share of a budget (the status page)
    NodeMetrics    the whole node's exposition (every worker's, summed, and ours)
    NodeActivity   the node's activity for the status page (every worker's, summed)
    Probe          probe the upstreams now (a model pulled through the worker,
                   /readyz): answered once the findings have been sent (Probed)
    Recall         the upstream that served a conversation last (affinity table)
    SignInWait     seconds before a client may try to sign in again (the
                   node's sign-in throttle)
    SignInAttempt  a client tries to sign in: counted before its credential is checked
    FogState       this node's state as the fog's members are told it (a worker
                   answers /fog/state on the peer port with it)
    SetDrain       drain the node, or stop: answered with the flag as it now is
    SignOut        a client signed out of the status page: answered once every
                   worker has been told (Revoke), so that the answer the
                   client gets comes after every worker refuses the session

and tells it (notices): Ready (it serves; with the credentials it accepts,
for the announcement), Failed (it cannot start, and why), Settle (a request
with a reservation ended: its record replaces the reservation), Record (a
request without one ended), Remember (an upstream served a conversation),
SignedIn (a client signed in: its failures are forgotten), FogFailed (a request
to a member failed before its first byte), FirstToken (the worker's recent
time to a first token, at most once a second).

The supervisor asks each worker Expose (its metrics) and WorkerActivity
(its activity), to sum them, and tells every worker ReloadTls (the
certificate files changed), EmbeddedChanged (the embedded model's new
state), Probed (what its probe of the upstreams found: the workers probe
none themselves, so the node probes each upstream once), FogMembers (what
its membership service found), Draining (the drain flag changed), Keys (the
API key file changed: the node's whole new set of keys, which every worker
checks from then on; the supervisor alone watches the file) and Revoke.

Leases: an Acquire's slot and a Quota's reservation are held by the
supervisor for the worker until the worker says it is done, gives up its
call, or its channel drops (it died): given back exactly once, whichever
comes first (workers/channel.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ...auth.api_keys import ApiKeyEntry
from ...embedded.supervisor import ServerStatus
from ...fog.members import CandidateView, Member
from ...fog.state import PeerState
from ...usage.ledger import BudgetWarning
from ...usage.options import Limits
from ...usage.quota import Decision, Usage
from ...usage.record import UsageRecord
from ...workers.messages import Call, Notice
from ..core.errors import GatewayError
from ..pipeline.admission import Load, Slots
from ..telemetry.activity import ActivityView
from ..upstreams.pool import Finding


class Op(enum.StrEnum):
    """Every message's name on the wire."""

    # A worker asks the supervisor.
    HELLO = "hello"
    ACQUIRE = "acquire"
    TRY_NOW = "try_now"
    POSITION = "position"
    LOAD = "load"
    QUOTA = "quota"
    PENDING = "pending"
    USAGE_OF = "usage_of"
    WARNINGS = "warnings"
    NODE_METRICS = "node_metrics"
    NODE_ACTIVITY = "node_activity"
    PROBE = "probe"
    RECALL = "recall"
    SIGN_IN_WAIT = "sign_in_wait"
    SIGN_IN_ATTEMPT = "sign_in_attempt"
    FOG_STATE = "fog_state"
    SET_DRAIN = "set_drain"
    SIGN_OUT = "sign_out"
    # A worker tells the supervisor.
    READY = "ready"
    FAILED = "failed"
    SETTLE = "settle"
    RECORD = "record"
    REMEMBER = "remember"
    SIGNED_IN = "signed_in"
    FOG_FAILED = "fog_failed"
    FIRST_TOKEN = "first_token"
    # The supervisor asks a worker.
    EXPOSE = "expose"
    WORKER_ACTIVITY = "worker_activity"
    # The supervisor tells every worker.
    RELOAD_TLS = "reload_tls"
    REVOKE = "revoke"
    EMBEDDED_CHANGED = "embedded_changed"
    PROBED = "probed"
    FOG_MEMBERS = "fog_members"
    DRAINING = "draining"
    KEYS = "keys"


# --- what a worker asks the supervisor ---------------------------------------------
@dataclass(frozen=True, slots=True)
class Probed(Notice):
    """What a probe of the upstreams found; numbered, so that a worker keeps
    the latest whichever way it arrives (in Welcome, or as this notice)."""

    op = Op.PROBED
    number: int
    findings: tuple[Finding, ...]


@dataclass(frozen=True, slots=True)
class Draining(Notice):
    """The node's drain flag (core/drain.py), as the supervisor holds it."""

    op = Op.DRAINING
    draining: bool
    since: float | None  # Unix time it started draining


@dataclass(frozen=True, slots=True)
class FogMembers(Notice):
    """What the node's membership service (node/fog.py) found: the members,
    and every candidate for the status page."""

    op = Op.FOG_MEMBERS
    members: tuple[Member, ...]
    candidates: tuple[CandidateView, ...]


@dataclass(frozen=True, slots=True)
class Keys(Notice):
    """The node's API keys, whole (the settings' own and the key file's), after
    the file changed; numbered, so that a worker keeps the latest whichever
    way it arrives (in Welcome, or as this notice)."""

    op = Op.KEYS
    number: int
    entries: tuple[ApiKeyEntry, ...]


@dataclass(frozen=True, slots=True)
class Welcome:
    choice: str  # why this upstream (upstreams/choice.py), for /readyz
    embedded: ServerStatus | None  # the embedded engine's state, if it runs
    probed: Probed | None  # the latest probe of the upstreams
    onboarding: str | None  # the phone onboarding page's URL, if the supervisor serves it
    drain: Draining
    fog: FogMembers | None  # None: the node is no member of a fog
    keys: Keys | None  # the node's API keys, when it follows a key file


@dataclass(frozen=True, slots=True)
class Hello(Call[Welcome]):
    op = Op.HELLO


@dataclass(frozen=True, slots=True)
class Refusal:
    """Admission's refusal (429, 503), as it raised it."""

    status: int
    message: str
    type: str
    code: str | None
    headers: dict[str, str]

    @classmethod
    def of(cls, exc: GatewayError) -> Refusal:
        return cls(exc.status, exc.message, exc.type, exc.code, exc.headers)

    def error(self) -> GatewayError:
        return GatewayError(
            self.status, self.message, type=self.type, code=self.code, headers=dict(self.headers)
        )


@dataclass(frozen=True, slots=True)
class Admitted:
    refusal: Refusal | None = None  # None: granted, and the slot is leased


@dataclass(frozen=True, slots=True)
class Acquire(Call[Admitted]):
    op = Op.ACQUIRE
    wait: int  # the worker's name for this wait (Position asks by it)
    uid: str
    slots: Slots
    priority: str | None  # the request's class (None: the node's default)


@dataclass(frozen=True, slots=True)
class Tried:
    wait: float | None  # None: granted, and the slots are leased; else seconds to wait


@dataclass(frozen=True, slots=True)
class TryNow(Call[Tried]):
    op = Op.TRY_NOW
    uid: str
    slots: Slots
    priority: str | None  # the wait is its class's


@dataclass(frozen=True, slots=True)
class Position(Call[int | None]):
    """1 for the next to get a slot; None once admitted or gone."""

    op = Op.POSITION
    wait: int


@dataclass(frozen=True, slots=True)
class LoadNow(Call[Load]):
    op = Op.LOAD


@dataclass(frozen=True, slots=True)
class Decided:
    started_at: float  # by the supervisor's clock: the reservation's time
    decision: Decision


@dataclass(frozen=True, slots=True)
class Quota(Call[Decided]):
    op = Op.QUOTA
    request: int  # the worker's name for the request (Settle names it)
    uid: str
    limits: Limits
    estimate: int  # tokens


@dataclass(frozen=True, slots=True)
class Pending(Call[int]):
    op = Op.PENDING


@dataclass(frozen=True, slots=True)
class UsageOf(Call[Usage]):
    op = Op.USAGE_OF
    uid: str


@dataclass(frozen=True, slots=True)
class Warnings(Call[tuple[BudgetWarning, ...]]):
    op = Op.WARNINGS


@dataclass(frozen=True, slots=True)
class NodeMetrics(Call[str]):
    op = Op.NODE_METRICS


@dataclass(frozen=True, slots=True)
class NodeActivity(Call[ActivityView]):
    op = Op.NODE_ACTIVITY


@dataclass(frozen=True, slots=True)
class Probe(Call[None]):
    op = Op.PROBE


@dataclass(frozen=True, slots=True)
class Recall(Call[int | None]):
    op = Op.RECALL
    lookups: tuple[bytes, ...]  # a conversation's prefix keys, first match wins


@dataclass(frozen=True, slots=True)
class SignInWait(Call[float]):
    op = Op.SIGN_IN_WAIT
    client: str


@dataclass(frozen=True, slots=True)
class SignInAttempt(Call[None]):
    op = Op.SIGN_IN_ATTEMPT
    client: str


@dataclass(frozen=True, slots=True)
class FogState(Call[PeerState]):
    op = Op.FOG_STATE


@dataclass(frozen=True, slots=True)
class SetDrain(Call[Draining]):
    op = Op.SET_DRAIN
    draining: bool


@dataclass(frozen=True, slots=True)
class SignOut(Call[None]):
    """A sign-out: the session is refused until it would have expired."""

    op = Op.SIGN_OUT
    session: str
    until: float


# --- what a worker tells the supervisor --------------------------------------------
@dataclass(frozen=True, slots=True)
class Ready(Notice):
    op = Op.READY
    auth: str  # the kinds of credentials it accepts, for the announcement


@dataclass(frozen=True, slots=True)
class Failed(Notice):
    op = Op.FAILED
    message: str  # for the operator, as serve.startup_failure put it


@dataclass(frozen=True, slots=True)
class Settle(Notice):
    op = Op.SETTLE
    request: int
    record: UsageRecord


@dataclass(frozen=True, slots=True)
class Record(Notice):
    op = Op.RECORD
    record: UsageRecord


@dataclass(frozen=True, slots=True)
class Remember(Notice):
    op = Op.REMEMBER
    key: bytes
    upstream: int  # its position among the configured upstreams


@dataclass(frozen=True, slots=True)
class SignedIn(Notice):
    op = Op.SIGNED_IN
    client: str


@dataclass(frozen=True, slots=True)
class FogFailed(Notice):
    """A request to a member failed before its first byte: the membership
    service asks it sooner (its breaker)."""

    op = Op.FOG_FAILED
    address: str
    why: str


@dataclass(frozen=True, slots=True)
class FirstToken(Notice):
    op = Op.FIRST_TOKEN
    seconds: float  # the worker's recent time to a first token


# --- what the supervisor asks and tells a worker -----------------------------------
@dataclass(frozen=True, slots=True)
class Expose(Call[str]):
    op = Op.EXPOSE


@dataclass(frozen=True, slots=True)
class WorkerActivity(Call[ActivityView]):
    op = Op.WORKER_ACTIVITY


@dataclass(frozen=True, slots=True)
class Revoke(Notice):
    """A sign-out (SignOut): refuse the session until it would have expired."""

    op = Op.REVOKE
    session: str
    until: float


@dataclass(frozen=True, slots=True)
class ReloadTls(Notice):
    op = Op.RELOAD_TLS


@dataclass(frozen=True, slots=True)
class EmbeddedChanged(Notice):
    op = Op.EMBEDDED_CHANGED
    status: ServerStatus
