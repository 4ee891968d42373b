"""The routing rule's new parts, without a network (issue 23): an upstream that is
down versus one at its cap, the circuit breaker, placement by expected start, a
busy answer as load, and who can serve a model."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fognode.routing.holders import holders, model_key, model_keys
from fognode.routing.order import (
    COLD,
    DOWN,
    LOADED,
    SOONEST,
    Option,
    expected_start,
    rank,
)
from fognode.routing.pace import Pace
from fognode.supervision.breaker import Breaker, BreakerOptions, State
from tests.support.clock import Clock


def opt(**fields: Any) -> Option:
    """An upstream that is up, has the model loaded and nothing in flight, no
    cap, 5 s to load a model; ``fields`` say what differs."""
    return Option(**{**BASE, **fields})


BASE: dict[str, Any] = {
    "up": True,
    "has_model": True,
    "loaded": True,
    "active": 0,
    "cap": 0,
    "load_seconds": 5.0,
}


def first(options: list[Option], **kwargs: object) -> tuple[int, str, bool]:
    best = rank(options, model=True, **kwargs)[0]  # type: ignore[arg-type]
    return best.position, ",".join(best.reasons), best.ready


# --- down versus at its cap (the 502 run) -------------------------------------------


def test_a_live_upstream_at_its_cap_is_waited_for_and_the_down_one_never_tried() -> None:
    """Before: the live upstream at its cap was skipped and the one marked down
    tried as a "last resort", whose refusal reached the client as a 502."""
    live_full = opt(active=1, cap=1, service=0.2)
    down = opt(up=False)
    ranked = rank([live_full, down], model=True)
    assert [(r.position, r.ready) for r in ranked] == [(0, False)]  # wait for it


def test_down_ones_are_tried_only_when_no_live_one_has_the_model() -> None:
    # The live one lacks the model, the down one has it: try the down one (and say so).
    assert first([opt(has_model=False), opt(up=False)]) == (1, "loaded,only,down", True)
    # Several down: the soonest of them, each ready to try (failover goes on).
    ranked = rank([opt(up=False, loaded=False), opt(up=False)], model=True)
    assert [(r.position, r.reasons[-1], r.ready) for r in ranked] == [
        (1, DOWN, True),
        (0, DOWN, True),
    ]
    # A request without a model (no loaded/cold): live first, down only if none is.
    assert [r.position for r in rank([opt(up=False), opt()], model=False)] == [1]


def test_unchecked_upstreams_count_as_live() -> None:
    assert first([opt(up=None), opt(up=False)]) == (0, "loaded,only", True)


# --- expected start -------------------------------------------------------------------


def test_expected_start_now_else_queue_times_service_else_load() -> None:
    assert expected_start(opt()) == 0
    # One request ahead on its one slot, 2 s a request: 2 s.
    assert expected_start(opt(active=1, service=2.0)) == 2.0
    # Three ahead of four slots (a cap of four): a slot is free.
    assert expected_start(opt(active=3, cap=4, service=2.0)) == 0
    # Four slots (llama.cpp says so) but a cap of two: two at once, the next one
    # frees in about its pace (here a request finishes every 2 s).
    assert expected_start(opt(active=2, cap=2, slots=4, service=2.0)) == 2.0
    assert expected_start(opt(active=1, cap=2, slots=4, service=2.0)) == 0
    # Unknown service time and a queue: could be long.
    assert expected_start(opt(active=1)) == math.inf
    # Cold: the load comes first.
    assert expected_start(opt(loaded=False, load_seconds=7)) == 7
    assert expected_start(opt(loaded=False, load_seconds=7), model=False) == 0
    # Busy long without a request finishing: the estimate grows as it goes.
    assert expected_start(opt(active=1, service=2.0, running_for=9.0)) == 9.0
    assert expected_start(opt(active=3, service=2.0, running_for=1.0)) == 6.0


def test_a_slow_loaded_upstream_does_not_take_every_request() -> None:
    """Issue 23: with no cap, 20 of 20 requests went to a slow upstream with the
    model loaded while another, with the model on disk, sat idle."""
    slow = opt(active=4, service=1.5)  # 6 s of queue
    idle_on_disk = opt(loaded=False, load_seconds=2.0)
    assert first([slow, idle_on_disk]) == (1, f"{COLD},{SOONEST}", True)
    # Once its queue is shorter than a load, the loaded one wins again.
    assert first([opt(active=1, service=1.5), idle_on_disk]) == (0, "loaded,least-busy", True)
    # While nothing is known of its speed, a busy upstream looks long: spread.
    assert first([opt(active=1), idle_on_disk]) == (1, f"{COLD},{SOONEST}", True)


def test_waiting_for_a_capped_loaded_upstream_can_beat_loading_elsewhere() -> None:
    capped = opt(active=1, cap=1, service=0.5)
    cold = opt(loaded=False, load_seconds=10)
    assert first([capped, cold]) == (0, "loaded,least-busy", False)  # wait 0.5 s, not load
    # Unknown speed: loading now beats waiting for who knows how long.
    assert first([opt(active=1, cap=1), cold]) == (1, f"{COLD},{SOONEST}", True)


def test_affinity_holds_where_it_costs_no_wait_and_yields_otherwise() -> None:
    both_free = [opt(), opt()]
    assert first(both_free, affine=1) == (1, "loaded,affinity", True)
    # Its upstream has a queue, the other has a slot free: yield.
    busy_there = [opt(), opt(active=1, service=1.0)]
    assert first(busy_there, affine=1) == (0, "loaded,least-busy,affinity-yielded", True)
    # Both alike busy: stay where the prompt is.
    alike = [opt(active=1, service=1.0), opt(active=1, service=1.0)]
    assert first(alike, affine=1) == (1, "loaded,affinity", True)


def test_equals_take_turns_among_the_least_busy() -> None:
    options = [
        Option(up=True, has_model=True, loaded=True, active=0, cap=4, picked=p) for p in (5, 2, 9)
    ]
    assert [r.position for r in rank(options, model=True)] == [1, 0, 2]
    assert {r.reasons for r in rank(options, model=True)} == {(LOADED, "least-busy")}


# --- busy is load, not absence ---------------------------------------------------------


def test_a_busy_upstream_does_not_look_idle() -> None:
    """Olla #144: a router that reads 503 as idle sends more to the busiest node."""
    busy_idle_looking = opt(busy=True, service=1.0)  # nothing in flight from here
    other = opt(active=1, cap=4, service=1.0)  # one in flight, slots free
    assert expected_start(busy_idle_looking) == 1.0
    assert first([busy_idle_looking, other]) == (1, "loaded,soonest", True)
    # Busy, and its speed unknown: after everything known to start.
    assert first([opt(busy=True), opt(loaded=False)]) == (1, f"{COLD},{SOONEST}", True)
    # But never out: alone, it is still tried (its answer is the answer).
    assert first([opt(busy=True), opt(up=False)]) == (0, "loaded,only", True)


# --- the breaker --------------------------------------------------------------------------


OPTIONS = BreakerOptions(failures=3, window=5.0, cooldown=1.0, max_cooldown=4.0, busy_seconds=2.0)


def test_a_failure_to_connect_takes_it_out_at_once_and_a_probe_brings_it_back() -> None:
    clock = Clock(now=100.0)
    breaker = Breaker(OPTIONS, clock=clock)
    assert breaker.failure(definitive=True) is True
    assert breaker.out and breaker.state is State.OPEN and breaker.trips == 1
    assert breaker.probe_at() == 101.0
    clock.now = 101.0
    breaker.probing()
    assert breaker.state is State.HALF_OPEN and breaker.probe_at() is None and breaker.out
    assert breaker.success() is True
    assert not breaker.out and breaker.probe_at() is None


def test_failed_probes_back_off_up_to_the_bound() -> None:
    clock = Clock(now=100.0)
    breaker = Breaker(OPTIONS, clock=clock)
    breaker.failure(definitive=True)
    gaps = []
    for _ in range(5):
        at = breaker.probe_at()
        assert at is not None
        gaps.append(at - clock.now)
        clock.now = at
        breaker.probing()
        breaker.failure(definitive=True)  # the probe failed
    assert gaps == [1.0, 2.0, 4.0, 4.0, 4.0]
    assert breaker.trips == 1  # out once, for a while


def test_other_failures_count_and_take_it_out_within_a_bounded_time() -> None:
    clock = Clock(now=100.0)
    breaker = Breaker(OPTIONS, clock=clock)
    assert breaker.failure() is False and not breaker.out
    assert breaker.probe_at() == 100.0  # confirm at once, without waiting for traffic
    clock.now += 0.1
    assert breaker.failure() is False
    assert breaker.probe_at() == pytest.approx(101.1)
    assert breaker.failure() is True and breaker.out  # the third in a row
    # An answer in between resets the count.
    other = Breaker(OPTIONS, clock=clock)
    other.failure()
    other.failure()
    other.success()
    assert other.failure() is False and not other.out
    # Slow failures: out once it has been failing for the window.
    slow = Breaker(OPTIONS, clock=clock)
    started = clock.now
    clock.now += 3.5  # e.g. no answer within the check timeout
    assert slow.failure(started=started) is False
    clock.now += 3.5
    assert slow.failure(started=clock.now - 3.5) is True
    # A connect timeout longer than the window is failing for that long already.
    timed_out = Breaker(OPTIONS, clock=clock)
    assert timed_out.failure(started=clock.now - 10.0) is True


def test_busy_is_load_for_a_moment_and_proves_it_is_alive() -> None:
    clock = Clock(now=100.0)
    breaker = Breaker(OPTIONS, clock=clock)
    breaker.failure()
    breaker.busy()  # it answered: alive
    assert breaker.failures == 0 and not breaker.out and breaker.busy_now()
    clock.now += 1.9
    assert breaker.busy_now()
    clock.now += 0.2
    assert not breaker.busy_now()
    breaker.busy(retry_after=10)
    assert breaker.busy_for() == pytest.approx(10.0)
    # Busy never takes it out, however often.
    for _ in range(10):
        breaker.busy()
    assert not breaker.out and breaker.trips == 0


def test_a_checks_answer_does_not_prove_what_a_requests_does() -> None:
    """An upstream that lists its models but fails every generation: the checks
    neither reset its count nor keep it in for long."""
    clock = Clock(now=100.0)
    breaker = Breaker(OPTIONS, clock=clock)
    breaker.failure()
    assert breaker.success(probe=True) is False and breaker.failures == 1
    assert breaker.probe_at() is None  # it answered: requests will tell
    breaker.failure()
    assert breaker.failure() is True  # the third in a row, checks between or not
    clock.now += 1.0
    breaker.probing()
    assert breaker.success(probe=True) is True and not breaker.out  # back in, on probation
    assert breaker.failure() is True and breaker.out  # at once, and for longer
    assert breaker.probe_at() == clock.now + 2.0
    clock.now += 2.0
    breaker.probing()
    breaker.success(probe=True)
    assert breaker.success() is False  # a request succeeded: probation over
    assert breaker.failure() is False and not breaker.out


def test_a_supervisors_verdict_takes_it_out_once() -> None:
    breaker = Breaker(OPTIONS, clock=Clock(now=100.0))
    assert breaker.trip() is True and breaker.trip() is False and breaker.trips == 1


# --- how fast it has been ---------------------------------------------------------------


def test_pace_learns_service_first_byte_and_load_time() -> None:
    pace = Pace()
    assert pace.service is None and pace.load_seconds(5.0) == 5.0
    pace.answered(0.2, cold=False)
    pace.answered(3.2, cold=True)  # 3 s more than usual: loading
    pace.finished(sent=10.0, now=11.0)
    assert pace.first_byte == 0.2 and pace.load == pytest.approx(3.0) and pace.service == 1.0
    pace.finished(sent=20.0, now=22.0)
    assert 1.0 < (pace.service or 0) < 2.0  # moves toward the new, keeps some of the old
    assert pace.load_seconds(5.0) == pytest.approx(3.0)


def test_pace_does_not_count_waiting_in_the_upstreams_own_queue() -> None:
    """Ten requests sent at once to an upstream that runs one at a time (1 s each)
    end a second apart: its pace is 1 s, not the 5.5 s they took on average."""
    pace = Pace()
    for n in range(1, 11):
        pace.finished(sent=0.0, now=float(n))
    assert pace.service == pytest.approx(1.0)
    assert pace.busy_for(oldest=0.0, now=12.5) == pytest.approx(2.5)


# --- who can serve model m -----------------------------------------------------------------


def test_names_compare_as_ollama_resolves_them() -> None:
    same = [
        "llama3.2",
        "Llama3.2:latest",
        "library/llama3.2",
        "registry.ollama.ai/library/llama3.2",
    ]
    assert {model_key(n) for n in same} == {"llama3.2:latest"}
    assert model_key("llama3.2:1b") != model_key("llama3.2")
    assert model_key("hf.co/org/Model-GGUF:Q4_K_M") == "hf.co/org/model-gguf:q4_k_m"
    assert model_key("localhost:5000/me/model") == "localhost:5000/me/model:latest"
    assert model_key("user/model") != model_key("model")


def test_holders_say_missing_only_when_every_list_is_known() -> None:
    lists = [model_keys(["llama3.2:1b"]), model_keys(["qwen2.5:0.5b", "phi4:14b"])]
    assert holders("PHI4:14b", lists).listed == (1,)
    assert not holders("phi4:14b", lists).missing
    assert holders("gemma3", lists).missing
    # One upstream has not said what it has: nobody can say the model is missing.
    unknown = holders("gemma3", [lists[0], None])
    assert not unknown.missing and unknown.unknown == (1,)
