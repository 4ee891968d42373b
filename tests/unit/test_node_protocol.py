"""The node's protocol (gateway/node/protocol.py over workers/messages.py): every
message crosses a worker's channel unchanged, each side takes exactly its
half of them, and what does not fit the declarations is refused without
reaching a handler or stopping the channel."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from fognode.auth.api_keys import ApiKeyEntry, ApiKeys, entry_for, new_key
from fognode.auth.authorizer import TokenAuthorizer
from fognode.auth.policy import AccessPolicy
from fognode.embedded.supervisor import ServerStatus, State
from fognode.fog.members import CandidateView, Member, Standing
from fognode.fog.state import PeerState
from fognode.gateway.config.settings import Settings
from fognode.gateway.core.drain import Drain
from fognode.gateway.core.errors import GatewayError
from fognode.gateway.node import protocol
from fognode.gateway.node.coordinator import Coordinator, WorkerLink
from fognode.gateway.node.protocol import (
    Acquire,
    Admitted,
    Decided,
    Draining,
    EmbeddedChanged,
    Expose,
    Failed,
    FirstToken,
    FogFailed,
    FogMembers,
    FogState,
    Hello,
    Keys,
    LoadNow,
    NodeActivity,
    NodeMetrics,
    Op,
    Pending,
    Position,
    Probe,
    Probed,
    Quota,
    Ready,
    Recall,
    Record,
    Refusal,
    ReloadTls,
    Remember,
    Revoke,
    SetDrain,
    Settle,
    SignedIn,
    SignInAttempt,
    SignInWait,
    SignOut,
    Tried,
    TryNow,
    UsageOf,
    Warnings,
    Welcome,
    WorkerActivity,
)
from fognode.gateway.node.worker import RemoteAdmission, SupervisorLink
from fognode.gateway.options import upstream_options
from fognode.gateway.pipeline.admission import Admission, ClassLoad, Load, Slots, Waiting
from fognode.gateway.telemetry.activity import ActivityView
from fognode.gateway.upstreams.pool import Finding, UpstreamPool
from fognode.routing.warm import LoadedModel
from fognode.usage.ledger import BudgetWarning
from fognode.usage.options import Limits
from fognode.usage.quota import Decision, Usage
from fognode.usage.record import Outcome, UsageRecord
from fognode.web.status import ErrorView, MinuteView
from fognode.workers.channel import CallFailed, Channel, Reply
from fognode.workers.messages import (
    Call,
    Malformed,
    Message,
    Notice,
    Peer,
    Table,
    answer_codec,
    codec,
    decode,
    encode,
)
from tests.support.helpers import wait_until
from tests.support.usage import rec

# A request a client left, its answer cut short (fields that round-trip as they are).
RECORD = rec(
    "apikey:alice",
    at=1_700_000_000.25,
    prompt=12,
    completion=34,
    outcome=Outcome.CLIENT_DISCONNECTED,
    partial=True,
    node="n1",
)
STATUS = ServerStatus(
    url="http://127.0.0.1:5001",
    alias="smollm2:135m",
    state=State.RESTARTING,
    since=12.5,
    restart_at=14.0,
    load_seconds=None,
    restart_delay=1.0,
    restarts=2,
    slots=4,
)
FINDINGS = (
    Finding(
        healthy=True,
        answered=True,
        error=None,
        models=("llama3.2:1b", "qwen3:0.6b"),
        loaded=(LoadedModel("llama3.2:1b", 5, None, "2030-01-01T00:00:00Z", 1_893_456_000.0),),
        slots=None,
        slots_busy=None,
    ),
    # llama.cpp's server: its slots
    Finding(
        healthy=True,
        answered=True,
        error=None,
        models=("smollm2:135m",),
        loaded=(),
        slots=4,
        slots_busy=1,
    ),
    # the breaker has it out, the last probe was refused
    Finding(
        healthy=False,
        answered=False,
        error="cannot connect (refused)",
        models=(),
        loaded=(),
        slots=None,
        slots_busy=None,
    ),
    # not probed yet
    Finding(
        healthy=None, answered=None, error=None, models=(), loaded=(), slots=None, slots_busy=None
    ),
)
ACTIVITY = ActivityView(
    minutes=[MinuteView(1_800_000_000.0, 4, 1, 0)],
    errors=[ErrorView(1_800_000_001.5, "r-9", "POST", "/v1/chat/completions", 503, None, "busy")],
    active_streams=1,
    in_flight=2,
    connections=None,
    upstreams=[3, 0],
)
PEER = PeerState(
    node="b81c2d",
    capacity=4,
    active=1,
    queued=0,
    free_slots=3,
    name="nuc",
    version="1.0",
    models=("llama3.2:1b",),
    loaded=("llama3.2:1b",),
    wait=0.0,
    ttft=0.42,
)
FOG = FogMembers(
    (Member("10.0.0.7:8444", "nuc", PEER, 0.8),),
    (
        CandidateView("10.0.0.7:8444", Standing.MEMBER, ("mdns",), "nuc", PEER, 0.8, None),
        CandidateView("10.0.0.9:8444", Standing.REFUSED, ("static",), "", None, None, "no marker"),
    ),
)
REFUSAL = Refusal(
    429, "Too many.", "rate_limit_error", "user_concurrency_limit", {"Retry-After": "2"}
)

RECORD_VALUES = cast(list[Any], codec(UsageRecord).encode(RECORD))
assert RECORD_VALUES[8] == "client_disconnected"  # the outcome, as the cases below assume

MEMBER = cast(list[Any], codec(Member).encode(FOG.members[0]))
STATE = cast(list[Any], codec(PeerState).encode(PEER))  # a member's own check applies

# One of every message the protocol declares, and one answer of every call.
# The API keys a worker checks, as the supervisor read them from the key file.
KEYS = (
    ApiKeyEntry("local-admin", True, bytes(range(32))),
    ApiKeyEntry("phone", False, bytes(32)),
    ApiKeyEntry("study", False, bytes(32), ("llama3.2:1b", "qwen2.5"), 1.8e9, "study", "batch"),
)
MESSAGES: list[Message] = [
    Hello(),
    Acquire(7, "apikey:alice", Slots.BOTH, "batch"),
    Acquire(8, "apikey:alice", Slots.NODE, None),
    TryNow("apikey:alice", Slots.NODE, None),
    TryNow("apikey:alice", Slots.BOTH, "interactive"),
    Position(7),
    LoadNow(),
    Quota(3, "uid:bob", Limits(1000, 10), 612),
    Pending(),
    UsageOf("apikey:study"),
    Warnings(),
    NodeMetrics(),
    NodeActivity(),
    Probe(),
    Recall((b"\x00\x01" * 8, bytes(16))),
    SignInWait("127.0.0.1"),
    SignInAttempt("::1"),
    FogState(),
    SetDrain(True),
    SignOut("sid-1", 1_800_000_600.5),
    Ready("api_key,firebase"),
    Failed("fognode: cannot serve TLS: no key"),
    Settle(3, RECORD),
    Record(dataclasses.replace(RECORD, outcome=Outcome.REJECTED, partial=False)),
    Remember(bytes(range(16)), 1),
    SignedIn("127.0.0.1"),
    Revoke("sid-1", 1_800_000_600.5),
    FogFailed("10.0.0.7:8444", "cannot connect (refused)"),
    FirstToken(0.37),
    Expose(),
    WorkerActivity(),
    ReloadTls(),
    EmbeddedChanged(STATUS),
    Probed(4, FINDINGS),
    FOG,
    Draining(True, 1_800_000_000.0),
    Keys(2, KEYS),
]
ANSWERS: dict[type[Call[Any]], list[object]] = {
    Hello: [
        Welcome(
            "Ollama at http://127.0.0.1:11434, as configured",
            None,
            None,
            None,
            Draining(False, None),
            None,
            None,
        ),
        Welcome(
            "embedded",
            STATUS,
            Probed(1, FINDINGS),
            "http://192.168.1.5:80",
            Draining(True, 1_800_000_000.0),
            FOG,
            Keys(1, KEYS),
        ),
    ],
    Acquire: [Admitted(), Admitted(REFUSAL)],
    TryNow: [Tried(None), Tried(2.5)],
    Position: [1, None],
    LoadNow: [
        Load(3, 5),
        Load(
            2,
            4,
            (
                ClassLoad("interactive", 1, 0.5, (Waiting("apikey:alice", 1),)),
                ClassLoad("batch", 3, 12.25, (Waiting("bob", 2), Waiting("carol", 1))),
            ),
        ),
    ],
    UsageOf: [Usage(), Usage(1200, 3, 1_700_000_000.5, 1_700_000_030.25)],
    Warnings: [
        (),
        (
            BudgetWarning("apikey:study", "tokens", 850, 1000, 1_700_050_000.0),
            BudgetWarning("uid-7", "requests", 9, 10, 1_700_000_060.5),
        ),
    ],
    Quota: [
        Decided(
            1_700_000_000.5,
            Decision(
                True,
                {"x-ratelimit-limit-requests": "10", "x-fognode-quota-warning": "requests 90%"},
                warnings=("requests",),
            ),
        ),
        Decided(1_700_000_000.5, Decision(True, {"x-ratelimit-limit-requests": "10"})),
        Decided(
            1_700_000_000.5,
            Decision(False, {}, 429, "rate_limit_exceeded", "requests", "Slow down.", 12),
        ),
    ],
    Pending: [0, 41],
    NodeMetrics: ["# HELP fognode_requests ...\n"],
    NodeActivity: [ACTIVITY],
    Probe: [None],
    Recall: [None, 2],
    SignInWait: [0.0, 3.5],
    SignInAttempt: [None],
    FogState: [PEER],
    SetDrain: [Draining(False, None)],
    SignOut: [None],
    Expose: [""],
    WorkerActivity: [ACTIVITY],
}


def declared() -> list[type[Message]]:
    return [
        kind
        for kind in vars(protocol).values()
        if isinstance(kind, type)
        and issubclass(kind, Message)
        and kind.__module__ == protocol.__name__
    ]


def across(values: list[Any]) -> list[Any]:
    """What the other end reads: JSON on a line."""
    return list(json.loads(json.dumps(values)))


def test_every_message_is_declared_once_under_its_own_op() -> None:
    kinds = declared()
    assert {type(m) for m in MESSAGES} == set(kinds)  # a new message needs an example here
    assert sorted(k.op for k in kinds) == sorted(Op)  # every op names exactly one message
    assert set(ANSWERS) == {k for k in kinds if issubclass(k, Call)}


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    values = encode(message)
    assert decode(type(message), across(values)) == message


@pytest.mark.parametrize(
    ("call", "answer"),
    [(call, answer) for call, answers in ANSWERS.items() for answer in answers],
    ids=lambda v: type(v).__name__ if not isinstance(v, type) else v.__name__,
)
def test_every_answer_round_trips(call: type[Call[Any]], answer: object) -> None:
    wire = answer_codec(call)
    assert wire.decode(json.loads(json.dumps(wire.encode(answer)))) == answer


async def test_each_side_takes_its_half_of_the_protocol() -> None:
    to_supervisor = {
        Op.HELLO, Op.ACQUIRE, Op.TRY_NOW, Op.POSITION, Op.LOAD, Op.QUOTA, Op.PENDING,
        Op.USAGE_OF, Op.WARNINGS, Op.NODE_METRICS, Op.NODE_ACTIVITY, Op.PROBE, Op.RECALL,
        Op.SIGN_IN_WAIT, Op.SIGN_IN_ATTEMPT, Op.FOG_STATE, Op.SET_DRAIN, Op.READY, Op.FAILED,
        Op.SIGN_OUT, Op.SETTLE, Op.RECORD, Op.REMEMBER, Op.SIGNED_IN, Op.FOG_FAILED,
        Op.FIRST_TOKEN,
    }  # fmt: skip
    to_worker = {
        Op.EXPOSE, Op.WORKER_ACTIVITY, Op.RELOAD_TLS, Op.EMBEDDED_CHANGED, Op.PROBED,
        Op.FOG_MEMBERS, Op.DRAINING, Op.REVOKE, Op.KEYS,
    }  # fmt: skip
    assert to_supervisor | to_worker == set(Op)
    coordinator = make_coordinator()
    link = WorkerLink(coordinator, 1, asyncio.get_running_loop().create_future())
    assert link.peer.table.accepts() == to_supervisor
    assert SupervisorLink().peer.table.accepts() == to_worker


@pytest.mark.parametrize(
    ("kind", "values", "why"),
    [
        (Acquire, [7, "alice", "both"], "not Acquire"),
        (Acquire, [7, "alice", "both", None, "extra"], "not Acquire"),
        (Acquire, ["7", "alice", "both", None], "not an integer"),
        (Acquire, [True, "alice", "both", None], "not an integer"),  # JSON's true is no number
        (Acquire, [7, None, "both", None], "not a string"),
        (Acquire, [7, "alice", "all", None], "no Slots"),
        (Acquire, [7, "alice", "both", 1], "not a string"),
        (FogState, [1], "not FogState"),
        (FogMembers, [[[*MEMBER[:2], ["", 1, 0, 0, 1, *STATE[5:]], 0.5]], []], "names its node"),
        (Position, [1.5], "not an integer"),
        (Quota, [3, "bob", [1000], 5], "not Limits"),
        (Quota, [3, "bob", [-1, 10], 5], "quota limits must be 0"),  # Limits' own check
        (Recall, [["zz"]], "not hexadecimal"),
        (Recall, ["00ff"], "not a list"),
        (SignInWait, [{"client": "x"}], "not a string"),
        (Revoke, ["sid", "soon"], "not a number"),
        (Settle, [3, RECORD.uid], "not UsageRecord"),
        (Record, [[*RECORD_VALUES[:8], "exploded", *RECORD_VALUES[9:]]], "no Outcome"),
        (EmbeddedChanged, [[STATUS.url, STATUS.alias, "melting", 1, 2, None, 1, 0, 4]], "no State"),
        (Probed, [1, [[True, None, ["m"], [], None]]], "not Finding"),
    ],
)
def test_values_that_do_not_fit_their_declaration_are_malformed(
    kind: type[Message], values: list[Any], why: str
) -> None:
    with pytest.raises(Malformed, match=why):
        decode(kind, values)


def test_a_type_without_a_wire_form_is_refused_when_declared() -> None:
    @dataclasses.dataclass(frozen=True)
    class Odd(Notice):
        op = "odd"
        choice: int | str

    with pytest.raises(TypeError, match=r"X \| None"):
        Table().notice(Odd, lambda notice: None)
    with pytest.raises(TypeError, match="no wire form"):
        codec(set)


def make_coordinator(**admission: int) -> Coordinator:
    options = dict(max_concurrent=1, max_queue=0, per_user_concurrent=1, per_user_queue=0)
    options.update(admission)
    settings = Settings(
        host="127.0.0.1", upstream_urls=["http://127.0.0.1:1", "http://127.0.0.1:2"]
    )
    pool = UpstreamPool(settings.upstream_urls, upstream_options(settings))
    return Coordinator(
        Admission(**options, queue_timeout=5.0),
        CollectorRegistry(),
        pool,
        choice="configured",
        drain=Drain(),
    )


Ends = tuple[Coordinator, SupervisorLink, asyncio.Future[None]]


@pytest.fixture
async def ends() -> AsyncIterator[Ends]:
    """A supervisor's coordinator and one worker's end, joined as in a node."""
    coordinator = make_coordinator()
    theirs, ready = await coordinator.attach(1)
    worker = SupervisorLink()
    await asyncio.get_running_loop().create_unix_connection(
        lambda: worker.peer.channel, sock=theirs
    )
    yield coordinator, worker, ready
    worker.peer.close()
    coordinator.close()
    await wait_until(ready.done, "the supervisor to see the channel go")
    ready.exception()  # a worker that never said Ready did not start: taken, not logged


async def test_a_worker_is_admitted_and_refused_as_the_supervisor_decides(ends: Ends) -> None:
    coordinator, worker, _ = ends
    admission = RemoteAdmission(worker.peer, capacity=1)
    permit = await admission.acquire("alice")  # a free slot, granted at once
    assert coordinator.admission.active == 1
    with pytest.raises(GatewayError) as refused:
        await admission.acquire("bob")  # no slot and no queue: the node is busy
    assert refused.value.status == 503 and refused.value.code == "node_busy"
    assert "Retry-After" in refused.value.headers
    load = await admission.load()
    assert (load.active, load.queued) == (1, 0)
    assert [(c.name, c.queued) for c in load.classes] == [("default", 0)]
    admission.release(permit)
    await wait_until(lambda: coordinator.admission.active == 0, "the slot to come back")


async def test_notices_reach_their_handler_and_hello_says_what_the_node_knows(ends: Ends) -> None:
    coordinator, worker, ready = ends
    coordinator.onboarding = "http://192.168.1.5:80"
    coordinator.probed = Probed(2, FINDINGS[:2])
    coordinator.keys_changed(KEYS)
    assert await worker.peer.call(Hello()) == Welcome(
        "configured",
        None,
        Probed(2, FINDINGS[:2]),
        "http://192.168.1.5:80",
        Draining(False, None),
        None,
        Keys(1, KEYS),
    )
    worker.peer.notify(Ready("api_key"))
    await asyncio.wait_for(ready, 5)
    assert coordinator.auth == "api_key"


async def test_a_call_that_is_not_served_here_is_refused_and_the_channel_lives_on(
    ends: Ends, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator, worker, _ = ends
    channel = worker.peer.channel
    with pytest.raises(CallFailed, match="no such message here: 'launch_missiles'"):
        await channel.call("launch_missiles", 1, 2)
    with pytest.raises(CallFailed, match="'expose'"):  # the supervisor's to ask, not to answer
        await channel.call(Op.EXPOSE)
    with pytest.raises(CallFailed, match="does not fit its declaration"):
        await channel.call(Op.ACQUIRE, "seven", ["alice"], "both")
    with pytest.raises(CallFailed, match="not a list"):
        await channel.call(Op.RECALL, "00")
    assert coordinator.admission.active == 0  # nothing reached admission
    assert (await worker.peer.call(LoadNow())).active == 0  # the channel still serves
    refusals = [r for r in caplog.records if "refused a call" in r.getMessage()]
    assert len(refusals) == 4 and all(r.levelno == logging.WARNING for r in refusals)


async def test_a_notice_that_is_not_taken_here_is_dropped_and_logged(
    ends: Ends, caplog: pytest.LogCaptureFixture
) -> None:
    coordinator, worker, ready = ends
    caplog.set_level(logging.WARNING, logger="fognode.workers")
    channel = worker.peer.channel
    channel.notify("self_destruct")
    channel.notify(Op.READY, 1, 2, 3)  # three values where one string is declared
    channel.notify(Op.RECORD, [1, 2])  # a record that is not one
    worker.peer.notify(Record(RECORD))  # usage accounting is off on this node
    worker.peer.notify(Ready("none"))
    await asyncio.wait_for(ready, 5)  # the one that fits arrived, after the others
    dropped = [r.getMessage() for r in caplog.records if "dropped a notice" in r.getMessage()]
    assert len(dropped) == 4, dropped
    assert coordinator.auth == "none"


async def test_an_answer_that_does_not_fit_fails_the_call_and_gives_back_its_lease() -> None:
    released: list[str] = []

    async def serve(op: str, args: list[Any]) -> Reply:
        return Reply(["granted"], release=lambda: released.append(op))  # not an Admitted

    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    callee, caller = Channel(serve=serve), Peer(Table())
    await loop.create_unix_connection(lambda: callee, sock=ours)
    await loop.create_unix_connection(lambda: caller.channel, sock=theirs)
    try:
        with pytest.raises(CallFailed, match="does not fit its declaration"):
            await caller.lease(Acquire(1, "alice", Slots.BOTH, None))
        await wait_until(lambda: released == [Op.ACQUIRE], "the lease to be given back")
        assert callee.leases == 0
    finally:
        caller.close()
        callee.close()


async def test_every_worker_checks_the_keys_the_supervisor_read_last(ends: Ends) -> None:
    """The key file changed: the supervisor's notice replaces the worker's keys
    whole; a Welcome that arrives after a newer notice changes nothing."""
    coordinator, worker, _ = ends
    key = new_key()
    worker.authorizer = TokenAuthorizer(
        verifier=None, api_keys=ApiKeys([]), policy=AccessPolicy.build()
    )
    assert worker.authorizer.api_keys.check(key) is None
    phone = ApiKeyEntry.parse(entry_for(key, "phone", admin=False))
    coordinator.keys_changed((*KEYS, phone))
    await wait_until(lambda: worker.keys is not None, "the notice to arrive")
    principal = worker.authorizer.api_keys.check(key)
    assert principal is not None and principal.uid == "apikey:phone"
    worker.take_keys(Keys(1, ()))  # older than what it has (a late Welcome)
    assert worker.authorizer.api_keys.check(key) is not None
    coordinator.keys_changed(KEYS)  # revoked
    await wait_until(
        lambda: worker.authorizer is not None and worker.authorizer.api_keys.check(key) is None,
        "the revocation to arrive",
    )
    worker.authorizer.close()
