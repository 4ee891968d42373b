"""The routing rule: the upstreams to try for a request, best first, and why.

A pure function of what the pool knows of each upstream (its breaker, its
last check, its requests in flight, how fast it has been) and of the
conversation's last upstream, so that it can be read, and tested, in one
place:

* candidates are the options that are live (not taken out by their breaker)
  and have the model (if none lists it: those whose lists are unknown). Only
  when no live option has it are the ones taken out tried ("down"): a request
  never gets an upstream's refusal while a live one could serve it;
* each candidate gets an **expected start**, the seconds until it could start
  the request (:func:`expected_start`): now when the model is loaded and a
  slot is free, else its queue times its recent pace, plus the time to load
  the model when it is not loaded. The soonest comes first; an option whose
  pace is not known yet, and that would queue, is taken to start never (go
  where things are known to be quick), but still before any option that is
  down;
* the conversation's last upstream first ("affinity") when that costs no wait
  (its expected start is the soonest); otherwise it yields;
* among equals, the least busy (requests in flight, relative to what it runs
  at once: the slots llama.cpp's server reports, its cap),
  the model loaded before cold, then taking turns (the one chosen longest
  ago first), so that new conversations spread; a burst that arrives before
  anything is measured spreads over the upstreams by what each has in flight.

An option at its cap can still come first (waiting for it is the soonest
start): ``Ranked.ready`` says whether the request can be sent now, and the
pool makes it wait otherwise. Each choice carries its reasons, words from
:data:`REASONS`.

Members of the fog are upstreams of another kind, with a rule of their own
below (:func:`rank_peers`): a node hands a request to one only when it
cannot serve it here, or when the member starts it sooner by a margin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LOADED = "loaded"  # the model is in this upstream's memory
COLD = "cold"  # it is not: the upstream loads it first
AFFINITY = "affinity"  # this upstream served the conversation's previous turn
YIELDED = "affinity-yielded"  # the conversation's upstream would have made it wait
LEAST_BUSY = "least-busy"  # the least busy of equals
SOONEST = "soonest"  # chosen over a loaded (or less busy) one: it can start sooner
ONLY = "only"  # no other option could take it
DOWN = "down"  # taken out by its breaker; tried because no live option has the model
WAITED = "waited"  # every option that could serve it was at its cap: it waited for one
FAILOVER = "failover"  # the ones before it could not be reached, or answered busy
REASONS = (LOADED, COLD, AFFINITY, YIELDED, LEAST_BUSY, SOONEST, ONLY, DOWN, WAITED, FAILOVER)


@dataclass(frozen=True)
class Option:
    """What the pool knows of one upstream, for one request."""

    up: bool | None  # False: taken out (breaker open, or its last check failed); None: unchecked
    has_model: bool | None  # None: it listed no models, so nobody knows
    loaded: bool  # the requested model is in its memory
    active: int  # requests in flight to it
    cap: int  # requests it may have in flight (0: no cap)
    picked: int = 0  # when it was last chosen (a counter; lower: longer ago)
    # Requests it runs at once, where it says so (llama.cpp's total_slots);
    # 0: not known, then its cap, else one.
    slots: int = 0
    # Recent seconds between two of its requests finishing while it was busy (its
    # pace: one request's duration when it runs one at a time); None: not measured.
    service: float | None = None
    load_seconds: float = 0.0  # expected seconds to load the model when it is not loaded
    busy: bool = False  # it answered "busy" (503) a moment ago: load, not absence
    running_for: float = 0.0  # seconds it has been busy without a request finishing

    @property
    def at_cap(self) -> bool:
        return bool(self.cap) and self.active >= self.cap

    @property
    def parallel(self) -> int:
        """Requests it runs at once: the lower of its slots and its cap, where known."""
        known = [n for n in (self.slots, self.cap) if n > 0]
        return min(known) if known else 1

    @property
    def load(self) -> float:
        """Requests in flight, relative to what it runs at once where that is known."""
        return self.active / self.parallel if self.slots or self.cap else float(self.active)


def expected_start(option: Option, *, model: bool = True) -> float:
    """Seconds until ``option`` could start one more request (a rough estimate).

    Zero when a slot is free (and the model loaded); otherwise the requests
    ahead of this one times its recent pace (the time between two of its
    requests finishing, at least as long as it has now been busy without one
    finishing: a long generation pushes the estimate up as it goes); infinite
    while its pace is unknown. A model that is not loaded adds the time to
    load it. A "busy" answer a moment ago counts as a full queue: load, never
    idleness.
    """
    ahead = option.active - option.parallel + 1
    if ahead <= 0 and not option.busy:
        wait = 0.0
    elif option.service is None:
        wait = math.inf
    else:
        wait = max(ahead, 1) * max(option.service, option.running_for)
    if model and not option.loaded:
        wait += option.load_seconds
    return wait


@dataclass(frozen=True)
class Ranked:
    position: int  # in the sequence of options given
    reasons: tuple[str, ...]
    ready: bool = True  # below its cap: the request can be sent now (else: wait for it)
    start: float = 0.0  # its expected start, in seconds


def _candidates(options: Sequence[Option], model: bool) -> tuple[list[int], bool]:
    """The options that may take the request, and whether they are down ones."""
    live = [i for i, o in enumerate(options) if o.up is not False]
    down = [i for i, o in enumerate(options) if o.up is False]
    if not model:
        return (live, False) if live else (down, True)
    for group, is_down in ((live, False), (down, True)):
        listed = [i for i in group if options[i].has_model]
        unknown = [i for i in group if options[i].has_model is None]
        if listed or unknown:
            return listed or unknown, is_down
    # Nobody lists it: let a live one say so (Ollama's 404, reworded).
    return (live, False) if live else (down, True)


def rank(options: Sequence[Option], *, model: bool, affine: int | None = None) -> list[Ranked]:
    """The positions to try, best first. ``model``: the request names one (only
    then do loaded and cold mean anything); ``affine``: the position of the
    upstream that served the conversation's previous turn, if known."""
    candidates, down = _candidates(options, model)
    if not candidates:
        return []
    start = {i: expected_start(options[i], model=model) for i in candidates}
    soonest = min(start.values())
    holds = affine is not None and affine in start and start[affine] <= soonest

    def key(i: int) -> tuple[float, bool, float, bool, int, int]:
        o = options[i]
        return (
            start[i],
            not (holds and i == affine),
            o.load,  # equally soon (both now, or both unknown): the less busy
            model and not o.loaded,
            o.picked,
            i,
        )

    def before_placement(i: int) -> tuple[bool, float, int, int]:
        """The order without expected starts: loaded first, then the least busy."""
        o = options[i]
        return (model and not o.loaded, o.load, o.picked, i)

    ordered = sorted(candidates, key=key)
    plain_first = min(candidates, key=before_placement)

    def reasons(i: int) -> tuple[str, ...]:
        o = options[i]
        words: list[str] = []
        if model:
            words.append(LOADED if o.loaded else COLD)
        if holds and i == affine:
            words.append(AFFINITY)
        elif len(candidates) == 1:
            words.append(ONLY)
        elif i == ordered[0] and i != plain_first and start[i] < start[plain_first]:
            words.append(SOONEST)
        else:
            words.append(LEAST_BUSY)
        if affine is not None and not (holds and i == affine):
            words.append(YIELDED)
        if down:
            words.append(DOWN)
        return tuple(words)

    return [
        Ranked(i, reasons(i), ready=down or not options[i].at_cap, start=start[i]) for i in ordered
    ]


# --- members of the fog: upstreams of another kind ----------------------------------
# A member of the fog (another fognode, fog/) as an option for a request that
# this node cannot start now: its own slots and queue, as it last said.
PEER_LOADED = "peer-loaded"  # it has the model in memory and a free slot
PEER_FREE = "peer-free"  # it has the model and a free slot (it loads the model first)
PEER_HAS_MODEL = "peer-has-model"  # it has the model, no slot free: the request waits there
PEER_REASONS = (PEER_LOADED, PEER_FREE, PEER_HAS_MODEL)


@dataclass(frozen=True)
class PeerOption:
    """What a member of the fog said of itself, for one request."""

    has_model: bool
    loaded: bool  # the model is in its memory
    free: int  # requests it can start now
    wait: float  # seconds a request would wait for a slot there
    ttft: float | None  # its recent time to first token
    draining: bool


def rank_peers(
    peers: Sequence[PeerOption],
    *,
    here: float | None,
    margin: float,
) -> list[Ranked]:
    """The members to hand a request to, best first; empty: keep it here.

    ``here``: when this node expects to start the request (its wait for a
    slot plus its own time to a first token), or None when it cannot serve
    it at all (it lacks the model, or drains): then every member with the
    model is a candidate, those that can start it now first, then the least
    busy. Otherwise only members that can start it now (a free slot; model
    in memory first, then on disk) and whose first token comes sooner than
    here by more than ``margin`` seconds: a busy member is never better
    than queueing here, where the phone already waits.
    """
    candidates = [i for i, p in enumerate(peers) if p.has_model and not p.draining]
    if here is not None:
        candidates = [i for i in candidates if peers[i].free > 0]

    def start(p: PeerOption) -> float:
        return (p.wait if p.free <= 0 else 0.0) + (p.ttft or 0.0)

    if here is not None:
        candidates = [i for i in candidates if start(peers[i]) + margin < here]

    def key(i: int) -> tuple[int, float, int]:
        p = peers[i]
        kind = 0 if p.free > 0 and p.loaded else 1 if p.free > 0 else 2
        return (kind, start(p), i)

    def reason(p: PeerOption) -> str:
        return PEER_HAS_MODEL if p.free <= 0 else PEER_LOADED if p.loaded else PEER_FREE

    return [Ranked(i, (reason(peers[i]),)) for i in sorted(candidates, key=key)]
