"""The fog's parts without a network: the state message, the hop assertion,
the member table (with a clock the test moves), and the rule that places a
request at a member (routing/order.py)."""

from __future__ import annotations

import json
import random

import pytest

from fognode.fog.hop import HOP, PRINCIPAL, QUEUE, Forwarded
from fognode.fog.members import (
    CandidateView,
    Member,
    MemberTable,
    Source,
    Standing,
    TableOptions,
    join_address,
    split_address,
)
from fognode.fog.state import PeerState
from fognode.routing.order import (
    PEER_FREE,
    PEER_HAS_MODEL,
    PEER_LOADED,
    PeerOption,
    rank_peers,
)


def state(node: str = "b", **fields: object) -> PeerState:
    values: dict[str, object] = {
        "node": node,
        "models": ["llama3.2:1b"],
        "loaded": [],
        "capacity": 4,
        "active": 0,
        "queued": 0,
        "free_slots": 4,
    }
    values.update(fields)
    return PeerState.from_dict(values)


# --- the state message --------------------------------------------------------------


def test_the_state_reads_back_what_was_sent_and_ignores_fields_it_does_not_know() -> None:
    sent = state(loaded=["llama3.2:1b"], ttft=0.25, draining=True, wait=1.5)
    assert PeerState.from_json(sent.to_json()) == sent
    newer = sent.to_json()[:-1] + b', "gpu": "none"}'
    assert PeerState.from_json(newer) == sent


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"node": "", "capacity": 1, "active": 0, "queued": 0, "free_slots": 1}',
        b'{"node": "b", "capacity": -1, "active": 0, "queued": 0, "free_slots": 1}',
        b'{"node": "b", "capacity": 1, "active": 0, "queued": 0}',
        b'{"node": "b", "capacity": "1", "active": 0, "queued": 0, "free_slots": 1}',
        b'{"node": "b", "capacity": 1, "active": 0, "queued": 0, "free_slots": 1, "models": [1]}',
        b'{"node": "b", "capacity": 1, "active": 0, "queued": 0, "free_slots": 1, "ttft": -1}',
        b"[]",
        b"not json",
    ],
)
def test_a_state_that_does_not_read_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        PeerState.from_json(body)


def test_a_model_without_a_tag_is_its_latest() -> None:
    s = state(models=["qwen2.5:latest"], loaded=["qwen2.5:latest"])
    assert s.has("qwen2.5") and s.holds("qwen2.5")
    assert not s.has("qwen2.5:7b")


# --- the hop --------------------------------------------------------------------------


def test_the_assertion_reads_back_and_carries_no_credential() -> None:
    sent = Forwarded("node-a", "apikey:phone user", "api_key", may_queue=True)
    headers = sent.headers()
    assert Forwarded.from_headers(headers) == sent
    assert set(headers) == {HOP, PRINCIPAL, QUEUE}
    assert "Bearer" not in "".join(headers.values())
    assert Forwarded.from_headers({}) is None
    classed = Forwarded("node-a", "uid-7", "firebase", may_queue=False, priority="batch")
    assert Forwarded.from_headers(classed.headers()) == classed
    assert json.loads(classed.headers()[PRINCIPAL])["class"] == "batch"
    # An entry node from before classes asserts none: the member's default.
    plain = Forwarded.from_headers(sent.headers())
    assert plain is not None and plain.priority is None


@pytest.mark.parametrize(
    "headers",
    [
        {HOP: "node-a"},
        {HOP: "node-a", PRINCIPAL: "{"},
        {HOP: "node-a", PRINCIPAL: '{"uid": "", "kind": "x"}'},
        {HOP: "node-a", PRINCIPAL: '{"uid": 3, "kind": "x"}'},
        {HOP: " ", PRINCIPAL: '{"uid": "u", "kind": "x"}'},
        {HOP: "node-a", PRINCIPAL: '{"uid": "u", "kind": "x", "class": 1}'},
        {HOP: "node-a", PRINCIPAL: '{"uid": "u", "kind": "x", "class": ""}'},
        {HOP: "node-a", PRINCIPAL: json.dumps({"uid": "u", "kind": "x", "class": "c" * 65})},
    ],
)
def test_an_assertion_that_does_not_read_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Forwarded.from_headers(headers)


# --- the member table -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


OPTIONS = TableOptions(refresh=1.5, jitter=0.2, stale_after=5.0, failures_to_open=2, retry_max=5.0)


def table(clock: Clock, options: TableOptions = OPTIONS) -> MemberTable:
    return MemberTable(options, own_id="a", clock=clock, rng=random.Random(7))


def test_a_candidate_is_a_member_only_once_it_answered() -> None:
    clock = Clock()
    members = table(clock)
    address = members.offer("10.0.0.2", 9443, Source.MDNS)
    assert members.members() == []
    assert members.delay(address) == 0  # asked at once
    assert [v.standing for v in members.views()] == [Standing.WAITING]
    members.answered(address, state(), "b.local")
    (member,) = members.members()
    assert (member.address, member.identity, member.node) == ("10.0.0.2:9443", "b.local", "b")


def test_members_are_asked_every_refresh_with_jitter_and_drop_out_when_stale() -> None:
    clock = Clock()
    members = table(clock)
    address = members.offer("10.0.0.2", 9443, Source.STATIC)
    delays = []
    for _ in range(50):
        members.answered(address, state(), "b.local")
        delay = members.delay(address)
        assert delay is not None
        delays.append(delay)
    assert all(1.2 <= d <= 1.8 for d in delays)
    assert len({round(d, 3) for d in delays}) > 10  # not in step
    clock.now += 5.0
    assert len(members.members()) == 1  # within the staleness bound
    clock.now += 0.01
    assert members.members() == []
    assert [v.standing for v in members.views()] == [Standing.OUT]


def test_two_failures_take_a_member_out_and_its_next_answer_brings_it_back() -> None:
    """The member's breaker is the upstreams' (supervision/breaker.py) in the
    table's terms: out after ``failures_to_open``, probed every ``refresh``,
    doubling up to ``retry_max``."""
    clock = Clock()
    members = table(clock)
    address = members.offer("10.0.0.2", 9443, Source.STATIC)
    members.answered(address, state(), "b.local")
    members.failed(address, "cannot connect (refused)")
    assert len(members.members()) == 1  # one blip is not enough
    first = members.delay(address)
    members.failed(address, "cannot connect (refused)")
    assert members.members() == []
    second = members.delay(address)
    assert first == 0  # a blip is confirmed at once ...
    assert second is not None and 1.5 * 0.8 <= second <= 1.5 * 1.2  # ... then every refresh ...
    for _ in range(10):
        members.failed(address, "cannot connect (refused)")
        delay = members.delay(address)
        assert delay is not None and delay <= 5.0 * 1.2  # ... less often, never beyond the bound
    assert delay >= 5.0 * 0.8
    clock.now += 3
    members.answered(address, state(), "b.local")
    assert len(members.members()) == 1


def test_a_refused_certificate_is_never_a_member_and_is_asked_rarely() -> None:
    clock = Clock()
    members = table(clock)
    address = members.offer("10.0.0.9", 9443, Source.MDNS)
    members.refused(address, "not signed by this fog's CA")
    assert members.members() == []
    (view,) = members.views()
    assert view.standing is Standing.REFUSED and view.last_error == "not signed by this fog's CA"
    delay = members.delay(address)
    assert delay is not None and delay >= 24


def test_one_node_at_two_addresses_counts_once_and_this_node_never() -> None:
    clock = Clock()
    members = table(clock)
    v4 = members.offer("10.0.0.2", 9443, Source.MDNS)
    static = members.offer("192.168.1.2", 9443, Source.STATIC)
    own = members.offer("10.0.0.1", 9443, Source.MDNS)
    members.answered(v4, state("b"), "b.local")
    clock.now += 0.5
    members.answered(static, state("b"), "b.local")
    members.answered(own, state("a"), "a.local")
    (member,) = members.members()
    assert member.address == static  # the freshest word
    assert members.delay(own) is None  # never asked again
    assert {v.address: v.standing for v in members.views()}[own] is Standing.SELF


def test_a_candidate_stays_while_any_source_names_it() -> None:
    clock = Clock()
    members = table(clock)
    address = members.offer("10.0.0.2", 9443, Source.MDNS)
    members.offer("10.0.0.2", 9443, Source.STATIC)
    members.withdraw(address, Source.MDNS)
    assert members.addresses() == [address]
    members.withdraw(address, Source.STATIC)
    assert members.addresses() == []
    assert members.delay(address) is None


def test_a_member_whose_announcement_goes_is_asked_until_it_fails() -> None:
    """mDNS says where to ask; a member's answers decide. An announcement that
    flickers (or a node that drains and withdraws it) keeps the member; a
    member that then fails, or falls silent, is gone with its last source."""
    clock = Clock()
    members = table(clock)
    address = members.offer("10.0.0.2", 9443, Source.MDNS)
    members.answered(address, state("b"), "b.local")
    members.withdraw(address, Source.MDNS)
    assert [m.address for m in members.members()] == [address]
    assert members.delay(address) is not None  # still asked
    members.answered(address, state("b"), "b.local")
    members.failed(address, "cannot connect (refused)")
    assert members.addresses() == [address]  # one blip: still a member
    members.failed(address, "cannot connect (refused)")
    assert members.addresses() == [] and members.delay(address) is None
    # Fallen silent instead: gone once its state is stale.
    again = members.offer("10.0.0.3", 9443, Source.MDNS)
    members.answered(again, state("c"), "c.local")
    members.withdraw(again, Source.MDNS)
    clock.now += 5.01
    assert members.delay(again) is None and members.addresses() == []
    # Named again by mDNS before it failed: an ordinary candidate again.
    back = members.offer("10.0.0.4", 9443, Source.MDNS)
    members.answered(back, state("d"), "d.local")
    members.withdraw(back, Source.MDNS)
    members.offer("10.0.0.4", 9443, Source.MDNS)
    members.failed(back, "cannot connect (refused)")
    members.failed(back, "cannot connect (refused)")
    assert members.addresses() == [back]  # out, but mDNS names it: asked again later


def test_a_member_crosses_processes_as_json() -> None:
    member = Member("10.0.0.2:9443", "b.local", state(ttft=0.3), 0.4)
    assert Member.from_json(member.to_json()) == member


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("10.0.0.2", "10.0.0.2", 9443),
        ("10.0.0.2:7000", "10.0.0.2", 7000),
        ("kitchen.local", "kitchen.local", 9443),
        ("[fd00::2]:7000", "fd00::2", 7000),
        ("fd00::2", "fd00::2", 9443),
    ],
)
def test_static_peers_are_host_and_port(text: str, host: str, port: int) -> None:
    assert split_address(text, 9443) == (host, port)
    assert split_address(join_address(host, port), 1) == (host, port)


# --- placement: the routing rule's peers ------------------------------------------------


def peer(**fields: object) -> PeerOption:
    values: dict[str, object] = {
        "has_model": True,
        "loaded": False,
        "free": 1,
        "wait": 0.0,
        "ttft": 0.2,
        "draining": False,
    }
    values.update(fields)
    return PeerOption(**values)  # type: ignore[arg-type]


def test_loaded_and_free_first_then_free_and_only_when_sooner_by_the_margin() -> None:
    peers = [peer(), peer(loaded=True), peer(free=0, wait=0.5), peer(has_model=False)]
    ranked = rank_peers(peers, here=5.0, margin=1.0)
    assert [(r.position, r.reasons) for r in ranked] == [(1, (PEER_LOADED,)), (0, (PEER_FREE,))]
    # Not sooner by the margin: the request waits here.
    assert rank_peers(peers, here=1.1, margin=1.0) == []
    # A slow member is no better than a short wait here.
    assert rank_peers([peer(ttft=4.0)], here=4.5, margin=1.0) == []


def test_a_node_that_cannot_serve_takes_any_member_with_the_model_busy_last() -> None:
    peers = [peer(free=0, wait=9.0), peer(free=0, wait=2.0), peer(loaded=True), peer(draining=True)]
    ranked = rank_peers(peers, here=None, margin=1.0)
    assert [(r.position, r.reasons) for r in ranked] == [
        (2, (PEER_LOADED,)),
        (1, (PEER_HAS_MODEL,)),
        (0, (PEER_HAS_MODEL,)),
    ]


def test_draining_members_and_members_without_the_model_are_never_chosen() -> None:
    assert rank_peers([peer(draining=True), peer(has_model=False)], here=None, margin=0) == []


def test_what_the_table_says_of_a_candidate_crosses_processes_as_json() -> None:
    clock = Clock()
    members = table(clock)
    waiting = members.offer("10.0.0.3", 9443, Source.MDNS)
    answered = members.offer("10.0.0.2", 9443, Source.STATIC)
    members.answered(answered, state(), "b.local")
    members.failed(waiting, "cannot connect (refused)")
    views = members.views()
    assert [CandidateView.from_json(v.to_json()) for v in views] == views
