"""The routing rule and its parts, without a network: warm models, conversation
keys, the affinity table, and the order of upstreams with its reasons."""

from __future__ import annotations

import time

from fognode.routing.affinity import AffinityTable
from fognode.routing.conversation import conversation_of
from fognode.routing.order import Option, rank
from fognode.routing.warm import find, from_ollama_ps, parse_time, served
from tests.support.clock import Clock

# --- warm.py ------------------------------------------------------------------------

PS = {
    "models": [
        {
            "name": "gemma3:latest",
            "model": "gemma3:latest",
            "size": 6591830464,
            "digest": "a2af6cc3eb7fa8be8504abaf9b04e88f17a119ec3f04a3addf55f92841195f5a",
            "details": {"family": "gemma3", "parameter_size": "4.3B"},
            "expires_at": "2025-10-17T16:47:07.93355-07:00",
            "size_vram": 5333539264,
            "context_length": 4096,
        },
        {"model": "qwen2.5:0.5b", "size": "big", "expires_at": "soon"},
        {"name": 7},
        "junk",
    ]
}


def test_ollama_ps_is_read_as_ollama_writes_it() -> None:
    loaded = from_ollama_ps(PS)
    assert set(loaded) == {"gemma3:latest", "qwen2.5:0.5b"}
    gemma = loaded["gemma3:latest"]
    assert (gemma.size, gemma.size_vram) == (6591830464, 5333539264)
    assert gemma.expires_at == "2025-10-17T16:47:07.93355-07:00"
    assert gemma.expires == parse_time("2025-10-17T23:47:07.93355Z")
    assert not gemma.hot(time.time())  # that expiry has passed: unloaded
    odd = loaded["qwen2.5:0.5b"]
    assert (odd.size, odd.expires) == (None, None) and odd.hot(time.time())
    assert find(loaded, "gemma3") is gemma and find(loaded, "gemma3:1b") is None
    assert from_ollama_ps({"models": None}) == {} == from_ollama_ps([])


def test_go_times_with_nanoseconds_parse() -> None:
    assert parse_time("2025-01-01T00:00:00.123456789Z") == parse_time("2025-01-01T00:00:00.123456Z")
    assert parse_time("2318-03-06T14:50:33.581386+01:00") is not None  # keep_alive -1
    assert parse_time("2025-01-01T00:00:00Z") == 1735689600.0
    assert parse_time("not a time") is None


def test_served_models_of_an_openai_compatible_server_are_loaded() -> None:
    loaded = served(["smollm2:135m"])
    assert loaded["smollm2:135m"].hot(time.time()) and loaded["smollm2:135m"].size is None


# --- conversation.py ----------------------------------------------------------------

SYSTEM = {"role": "system", "content": "Be brief."}


def turns(n: int) -> list[dict[str, object]]:
    """A conversation's messages at its turn ``n`` (1-based)."""
    messages: list[dict[str, object]] = [SYSTEM]
    for i in range(1, n + 1):
        messages.append({"role": "user", "content": f"question {i}"})
        if i < n:
            messages.append({"role": "assistant", "content": f"answer {i}"})
    return messages


def test_turn_n_looks_up_what_turn_n_minus_1_recorded() -> None:
    first, second, third = (conversation_of("u", "m", turns(n)) for n in (1, 2, 3))
    assert first is not None and second is not None and third is not None
    assert first.lookups == ()  # nothing answered yet
    assert second.lookups == (first.record,)
    assert third.lookups == (second.record, first.record)  # the longest prefix first
    # The same turn again (a retry) has the same keys.
    assert conversation_of("u", "m", turns(2)) == second


def test_keys_depend_on_caller_model_and_every_message() -> None:
    base = conversation_of("u", "m", turns(2))
    assert base is not None
    assert conversation_of("other user", "m", turns(2)) != base
    assert conversation_of("u", "other model", turns(2)) != base
    edited = turns(2)
    edited[1] = {"role": "user", "content": "question 1, edited"}
    changed = conversation_of("u", "m", edited)
    assert changed is not None and changed.lookups != base.lookups
    # Framing: moving text between role and content changes the key.
    a = conversation_of("u", "m", [{"role": "user", "content": "ab"}])
    b = conversation_of("u", "m", [{"role": "useru", "content": "b"}])
    assert a is not None and b is not None and a.record != b.record


def test_contents_of_any_shape_and_broken_messages() -> None:
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}]
    lone = "\ud800 surrogate from JSON"
    assert conversation_of("u", "m", [{"role": "user", "content": parts}]) is not None
    assert conversation_of("u", "m", [{"role": "user", "content": lone}]) is not None
    assert conversation_of("u", "m", [{"role": 3, "content": None}]) is not None
    assert conversation_of("u", "m", []) is None
    assert conversation_of("u", "m", "hello") is None
    assert conversation_of("u", "m", ["not a message"]) is None


# --- affinity.py --------------------------------------------------------------------


def test_the_table_finds_the_first_fresh_key_and_forgets_expired_ones() -> None:
    clock = Clock(1000.0)
    table = AffinityTable(capacity=10, ttl=60, clock=clock)
    table.remember(b"turn1", 0)
    clock.now += 30
    table.remember(b"turn2", 1)
    assert table.find([b"turn3", b"turn2", b"turn1"]) == 1
    assert table.find([b"unknown", b"turn1"]) == 0
    clock.now += 31  # turn1 is 61 s old, turn2 31 s
    assert table.find([b"turn1"]) is None
    assert table.find([b"turn2"]) == 1
    assert len(table) == 1
    table.remember(b"turn2", 0)  # served again, elsewhere: the latest counts
    clock.now += 59
    assert table.find([b"turn2"]) == 0


def test_the_table_is_bounded() -> None:
    clock = Clock(1000.0)
    table = AffinityTable(capacity=3, ttl=60, clock=clock)
    for i in range(5):
        table.remember(bytes([i]), i)
    assert len(table) == 3
    assert table.find([b"\x00"]) is None and table.find([b"\x01"]) is None
    assert table.find([b"\x04"]) == 4
    clock.now += 61
    table.remember(b"new", 1)  # the expired ones go as new ones come
    assert len(table) == 1


# --- order.py -----------------------------------------------------------------------


def opt(
    *,
    up: bool | None = True,
    has: bool | None = True,
    loaded: bool = True,
    active: int = 0,
    cap: int = 0,
    picked: int = 0,
) -> Option:
    return Option(
        up=up, has_model=has, loaded=loaded, active=active, cap=cap, picked=picked, load_seconds=5
    )


def order(options: list[Option], affine: int | None = None) -> list[tuple[int, str]]:
    return [(r.position, ",".join(r.reasons)) for r in rank(options, model=True, affine=affine)]


def test_loaded_before_cold_before_lacking() -> None:
    options = [opt(has=False), opt(loaded=False), opt(loaded=True, active=1, cap=2)]
    assert order(options) == [(2, "loaded,least-busy"), (1, "cold,least-busy")]


def test_conversation_goes_back_to_its_upstream_when_it_is_free() -> None:
    options = [opt(), opt()]
    assert order(options, affine=1) == [
        (1, "loaded,affinity"),
        (0, "loaded,least-busy,affinity-yielded"),
    ]
    # Busier than the other but not saturated (cap 4): still its turn.
    options = [opt(cap=4), opt(active=2, cap=4)]
    assert order(options, affine=1)[0] == (1, "loaded,affinity")


def test_affinity_yields_to_an_idle_upstream_with_the_model_loaded() -> None:
    # Saturated (one in flight, no cap: it runs one at a time) and the other is idle.
    options = [opt(), opt(active=1)]
    assert order(options, affine=1)[0] == (0, "loaded,least-busy,affinity-yielded")
    # At its cap: waiting for it comes after the one with a slot free.
    options = [opt(active=1, cap=4), opt(active=4, cap=4)]
    ranked = rank(options, model=True, affine=1)
    assert [(r.position, r.ready) for r in ranked] == [(0, True), (1, False)]
    assert ranked[0].reasons == ("loaded", "least-busy", "affinity-yielded")
    # Down: not tried at all while a live upstream has the model.
    options = [opt(), opt(up=False)]
    assert order(options, affine=1) == [(0, "loaded,only,affinity-yielded")]


def test_the_slots_an_upstream_reports_count_instead_of_one_at_a_time() -> None:
    """llama.cpp's server says how many requests it runs at once (its slots):
    with two in flight of four it is not saturated, so the conversation
    stays where its prompt is; without a report, one in flight is."""
    options = [opt(), Option(True, True, True, active=2, cap=0, slots=4)]
    assert order(options, affine=1)[0] == (1, "loaded,affinity")
    options = [opt(), Option(True, True, True, active=4, cap=0, slots=4)]
    assert order(options, affine=1)[0] == (0, "loaded,least-busy,affinity-yielded")
    # Least busy relative to what each runs: 2 of 4 is less than 1 of 1.
    options = [opt(active=1), Option(True, True, True, active=2, cap=0, slots=4)]
    assert order(options)[0] == (1, "loaded,least-busy")


def test_affinity_holds_when_no_idle_upstream_has_the_model_loaded() -> None:
    # The other is idle but cold: waiting where the prompt is (one request of about
    # a second ahead) beats loading (5 s).
    busy = Option(up=True, has_model=True, loaded=True, active=1, cap=0, service=1.0)
    options = [opt(loaded=False), busy]
    assert order(options, affine=1)[0] == (1, "loaded,affinity")
    # Both busy alike: wait where the prompt is.
    options = [opt(active=1), opt(active=1)]
    assert order(options, affine=1)[0] == (1, "loaded,affinity")


def test_a_cold_conversation_upstream_yields_to_a_loaded_one() -> None:
    options = [opt(loaded=True), opt(loaded=False)]
    assert order(options, affine=1)[0] == (0, "loaded,least-busy,affinity-yielded")


def test_equals_take_turns_and_lists_unknown_count_as_maybe() -> None:
    options = [opt(picked=5), opt(picked=2), opt(picked=9)]
    assert [p for p, _ in order(options)] == [1, 0, 2]
    options = [opt(has=None, loaded=False), opt(has=None, loaded=False, active=1)]
    assert order(options) == [(0, "cold,least-busy"), (1, "cold,least-busy")]
    # Nobody lists it: an upstream that is up says so; the ones that are down only
    # when none is up.
    assert order([opt(has=False), opt(has=False, up=False)]) == [(0, "loaded,only")]
    assert order([opt(has=False, up=False)]) == [(0, "loaded,only,down")]
    no_model = rank([opt(active=1), opt()], model=False)
    assert [(r.position, r.reasons) for r in no_model] == [
        (1, ("least-busy",)),
        (0, ("least-busy",)),
    ]
