"""The node's scheduler: priority classes in the one Admission.

Which waiting request gets a slot that frees is the subtle part of sharing a
node: a class above another goes first, first come first served within a
class and within a user, a class with a maximum wait is never starved, and
a request that leaves gives its place up at once. The clock is the test's,
so "waited long enough" is exact.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from fognode.gateway.config.settings import Settings
from fognode.gateway.options import classes
from fognode.gateway.pipeline.admission import (
    Admission,
    AdmissionCollector,
    Classes,
    Permit,
    PriorityClass,
    Ticket,
)

CLASSES = Classes(
    (PriorityClass("interactive"), PriorityClass("batch", max_wait=10.0)), "interactive"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admission(clock: Clock | None = None, **overrides: Any) -> Admission:
    options: dict[str, Any] = {
        "max_concurrent": 1,
        "max_queue": 32,
        "per_user_concurrent": 1,
        "per_user_queue": 8,
        "queue_timeout": 60.0,
        "classes": CLASSES,
    }
    if clock is not None:
        options["clock"] = clock
    return Admission(**(options | overrides))


class Arrivals:
    """Requests that wait, in the order they arrived, and the order they got a slot."""

    def __init__(self, gate: Admission) -> None:
        self.gate = gate
        self.granted: list[str] = []
        self.tasks: dict[str, asyncio.Task[Permit]] = {}
        self.tickets: dict[str, Ticket] = {}

    async def arrive(self, name: str, uid: str, priority: str | None) -> None:
        ticket = self.tickets[name] = Ticket()

        async def wait() -> Permit:
            permit = await self.gate.acquire(uid, ticket, priority=priority)
            self.granted.append(name)
            return permit

        self.tasks[name] = asyncio.ensure_future(wait())
        await asyncio.sleep(0)  # it is in its queue now

    async def serve_next(self, holder: Permit) -> Permit:
        """The slot's holder finishes: whoever the scheduler picks gets it."""
        before = len(self.granted)
        self.gate.release(holder)
        for _ in range(10):
            await asyncio.sleep(0)
            if len(self.granted) > before:
                break
        name = self.granted[-1]
        return self.tasks[name].result()


async def test_the_highest_class_goes_first_and_each_class_in_arrival_order() -> None:
    gate = admission()
    queue = Arrivals(gate)
    holder = await gate.acquire("first", priority="batch")
    for n in range(10):  # ten users' batch jobs wait ...
        await queue.arrive(f"batch-{n}", f"user-{n}", "batch")
    await queue.arrive("clinician", "dr", "interactive")  # ... and then a clinician asks
    await queue.arrive("nurse", "rn", "interactive")
    # The clinician is told it is next, though ten came before it.
    assert await gate.position(queue.tickets["clinician"]) == 1
    assert await gate.position(queue.tickets["nurse"]) == 2
    assert await gate.position(queue.tickets["batch-0"]) == 3
    for _ in range(12):
        holder = await queue.serve_next(holder)
    gate.release(holder)
    assert queue.granted == ["clinician", "nurse", *(f"batch-{n}" for n in range(10))]
    assert gate.active == 0 and gate.queued == 0


async def test_a_class_past_its_maximum_wait_goes_before_higher_ones() -> None:
    clock = Clock()
    gate = admission(clock)
    queue = Arrivals(gate)
    holder = await gate.acquire("someone", priority="interactive")
    await queue.arrive("job", "script", "batch")
    served = []
    # A steady interactive load: someone interactive always waits. Each
    # request takes 1 s, so the node frees a slot every second.
    for second in range(1, 14):
        await queue.arrive(f"chat-{second}", f"phone-{second}", "interactive")
        clock.now += 1.0
        holder = await queue.serve_next(holder)
        served.append(queue.granted[-1])
        if queue.granted[-1] == "job":
            break
    # It went next once the slot after this one would have come past its
    # 10 s (at the pace the node serves): within its maximum wait, and not
    # a slot earlier than needed.
    assert served[-1] == "job"
    waited = clock.now - 1000.0
    assert 8.0 <= waited <= 10.0, served
    gate.release(holder)
    for name, task in queue.tasks.items():
        if name not in queue.granted:
            task.cancel()
    await asyncio.gather(*queue.tasks.values(), return_exceptions=True)
    assert gate.queued == 0
    assert gate.global_gate.overdue == [0, 1]  # counted in /metrics


async def test_without_a_maximum_wait_a_lower_class_waits_while_higher_ones_do() -> None:
    clock = Clock()
    gate = admission(
        clock, classes=Classes((PriorityClass("interactive"), PriorityClass("batch")), "batch")
    )
    queue = Arrivals(gate)
    holder = await gate.acquire("someone", priority="interactive")
    await queue.arrive("job", "script", None)  # no class: the default, batch
    for second in range(1, 30):
        await queue.arrive(f"chat-{second}", f"phone-{second}", "interactive")
        clock.now += 1.0
        holder = await queue.serve_next(holder)
        assert queue.granted[-1] != "job"
    holder = await queue.serve_next(holder)  # the interactive load ended
    assert queue.granted[-1] == "job"
    gate.release(holder)


async def test_a_users_requests_keep_their_order_whatever_waits_around_them() -> None:
    gate = admission(per_user_concurrent=1, per_user_queue=8)
    queue = Arrivals(gate)
    holder = await gate.acquire("other", priority="interactive")
    for n in range(3):
        await queue.arrive(f"alice-{n}", "alice", "batch")
        await queue.arrive(f"bob-{n}", "bob", "interactive")
    while len(queue.granted) < 6:
        holder = await queue.serve_next(holder)
    gate.release(holder)
    order = queue.granted
    assert [n for n in order if n.startswith("alice")] == ["alice-0", "alice-1", "alice-2"]
    assert [n for n in order if n.startswith("bob")] == ["bob-0", "bob-1", "bob-2"]
    # bob's class goes first whenever bob has a request at the node's queue.
    assert order[0] == "bob-0"
    assert gate.active == 0 and gate.queued == 0 and not gate._users


async def test_a_request_that_leaves_gives_its_place_up_at_once() -> None:
    gate = admission()
    queue = Arrivals(gate)
    holder = await gate.acquire("someone", priority="batch")
    await queue.arrive("clinician", "dr", "interactive")
    await queue.arrive("job-1", "u1", "batch")
    await queue.arrive("job-2", "u2", "batch")
    assert await gate.position(queue.tickets["job-2"]) == 3
    queue.tasks["clinician"].cancel()  # the phone left
    await asyncio.sleep(0)
    assert gate.queued == 2
    assert await gate.position(queue.tickets["job-1"]) == 1
    assert await gate.position(queue.tickets["job-2"]) == 2
    assert await gate.position(queue.tickets["clinician"]) is None
    holder = await queue.serve_next(holder)
    assert queue.granted == ["job-1"]
    queue.tasks["job-2"].cancel()
    await asyncio.sleep(0)
    gate.release(holder)  # nobody waits: the slot is free again
    assert gate.active == 0 and gate.queued == 0 and not gate._users
    assert gate.try_acquire("later") is not None


async def test_a_request_cancelled_as_its_slot_arrives_passes_it_to_the_next_in_class_order() -> (
    None
):
    gate = admission()
    queue = Arrivals(gate)
    holder = await gate.acquire("someone", priority="batch")
    await queue.arrive("job", "u1", "batch")
    await queue.arrive("clinician", "dr", "interactive")
    gate.release(holder)  # handed to the clinician ...
    queue.tasks["clinician"].cancel()  # ... who leaves before it runs again
    await asyncio.gather(queue.tasks["clinician"], return_exceptions=True)
    permit = await asyncio.wait_for(queue.tasks["job"], 1)
    gate.release(permit)
    assert gate.active == 0 and gate.queued == 0


async def test_the_queue_by_class_names_users_only_and_counts_them() -> None:
    clock = Clock()
    gate = admission(clock, per_user_concurrent=1)
    queue = Arrivals(gate)
    holder = await gate.acquire("someone", priority="batch")
    await queue.arrive("a1", "apikey:study", "batch")
    await queue.arrive("a2", "apikey:study", "batch")  # waits at its user's own gate
    clock.now += 4.0
    await queue.arrive("c", "dr", "interactive")
    await queue.arrive("x", "someone-else", "no-such-class")  # the default class
    load = await gate.load()
    assert (load.active, load.queued) == (1, 4)
    interactive, batch = load.classes
    assert (interactive.name, interactive.queued) == ("interactive", 2)
    assert {w.uid for w in interactive.users} == {"dr", "someone-else"}
    assert (batch.name, batch.queued, batch.longest) == ("batch", 2, 4.0)
    assert [(w.uid, w.requests) for w in batch.users] == [("apikey:study", 2)]
    for task in queue.tasks.values():
        task.cancel()
    await asyncio.gather(*queue.tasks.values(), return_exceptions=True)
    gate.release(holder)


async def test_waits_are_counted_by_class_in_metrics() -> None:
    clock = Clock()
    gate = admission(clock)
    registry = CollectorRegistry()
    registry.register(AdmissionCollector(gate))
    queue = Arrivals(gate)
    holder = await gate.acquire("someone", priority="interactive")  # no wait
    await queue.arrive("job", "u1", "batch")
    clock.now += 3.0
    holder = await queue.serve_next(holder)
    gate.release(holder)
    text = generate_latest(registry).decode()
    assert 'fognode_admission_wait_seconds_count{class="interactive"} 1.0' in text
    assert 'fognode_admission_wait_seconds_count{class="batch"} 1.0' in text
    assert 'fognode_admission_wait_seconds_sum{class="batch"} 3.0' in text
    assert 'fognode_admission_wait_seconds_bucket{class="batch",le="2.5"} 0.0' in text
    assert 'fognode_admission_wait_seconds_bucket{class="batch",le="5"} 1.0' in text
    assert 'fognode_queue_depth_by_class{class="batch"} 0.0' in text
    assert 'fognode_admission_overdue_total{class="batch"} 0.0' in text


@pytest.mark.parametrize(
    ("order", "default"),
    [((), "x"), (("a", "a"), "a"), (("a", "b"), "c")],
)
def test_classes_are_distinct_and_include_the_default(order: tuple[str, ...], default: str) -> None:
    with pytest.raises(ValueError):
        Classes(tuple(PriorityClass(n) for n in order), default)


def test_an_unknown_class_is_the_default() -> None:
    assert CLASSES.rank("batch") == 1
    assert CLASSES.rank(None) == CLASSES.rank("vip") == 0
    assert CLASSES.known("vip") == "interactive"


def test_settings_with_classes_of_ones_own_need_no_more() -> None:
    own = Settings(priority_classes="urgent,routine")
    assert own.priority_default_class == "urgent" and own.priority_max_wait == {}
    assert classes(own) == Classes((PriorityClass("urgent"), PriorityClass("routine")), "urgent")
    default = classes(Settings())
    assert default.names == ("interactive", "batch") and default.default == "interactive"
    assert default.order[1].max_wait == 30.0


@pytest.mark.parametrize(
    "given",
    [
        {"priority_classes": "a,a"},
        {"priority_classes": "a,b", "priority_default_class": "c"},
        {"priority_classes": "a,b", "priority_max_wait": {"c": 5}},
        {"priority_max_wait": {"batch": -1}},
        {"priority_tier_classes": {"guest": "vip"}},
    ],
)
def test_settings_that_name_a_class_that_is_not_there_are_refused(given: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(**given)
