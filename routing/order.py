"""The routing rule: the upstreams to try for a request, best first, and why.

A pure function of what the pool knows of each upstream (its last check,
its requests in flight) and of the conversation's last upstream, so that
the rule can be read, and tested, in one place:

* candidates are the upstreams that are up, below their cap, and have the
  model (if none lists it: those whose lists are unknown, then any);
* first those where the model is loaded, then the rest ("cold": the
  upstream loads it first);
* within each, the conversation's last upstream first ("affinity"), unless
  it is saturated (as many requests in flight as it runs at once: the slots
  llama.cpp's server reports, else its cap, else one) while another
  candidate has the model loaded
  and nothing in flight: then it yields, since waiting behind a busy
  upstream costs more than reading the prompt again on an idle one;
* then the least busy (requests in flight, relative to what it runs at once), equals
  taking turns (the one chosen longest ago first), so that new
  conversations spread over the upstreams;
* upstreams marked down by their last check come last, in case they are
  back (failover tries them only when everything else failed to connect).

Each choice carries its reasons, words from :data:`REASONS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

LOADED = "loaded"  # the model is in this upstream's memory
COLD = "cold"  # it is not: the upstream loads it first
AFFINITY = "affinity"  # this upstream served the conversation's previous turn
YIELDED = "affinity-yielded"  # the conversation's upstream was busy, down or cold
LEAST_BUSY = "least-busy"  # the least busy of equals
ONLY = "only"  # no other upstream could take it
FAILOVER = "failover"  # the ones before it could not be reached
REASONS = (LOADED, COLD, AFFINITY, YIELDED, LEAST_BUSY, ONLY, FAILOVER)


@dataclass(frozen=True)
class Option:
    """What the pool knows of one upstream, for one request."""

    up: bool | None  # False: its last check failed; None: not checked yet
    has_model: bool | None  # None: it listed no models, so nobody knows
    loaded: bool  # the requested model is in its memory
    active: int  # requests in flight to it
    cap: int  # requests it may have in flight (0: no cap)
    picked: int = 0  # when it was last chosen (a counter; lower: longer ago)
    slots: int = 0  # requests it says it runs at once (llama.cpp's slots; 0: not known)

    @property
    def at_cap(self) -> bool:
        return bool(self.cap) and self.active >= self.cap

    @property
    def parallel(self) -> int:
        """Requests it runs at once: its own slots, else its cap, else one."""
        return self.slots or self.cap or 1

    @property
    def saturated(self) -> bool:
        """One more request would wait for one of its slots."""
        return self.active >= self.parallel

    @property
    def load(self) -> float:
        return self.active / self.parallel if self.slots or self.cap else float(self.active)


@dataclass(frozen=True)
class Ranked:
    position: int  # in the sequence of options given
    reasons: tuple[str, ...]


def rank(options: Sequence[Option], *, model: bool, affine: int | None = None) -> list[Ranked]:
    """The positions to try, best first. ``model``: the request names one (only
    then do loaded and cold mean anything); ``affine``: the position of the
    upstream that served the conversation's previous turn, if known."""
    up = [i for i, o in enumerate(options) if o.up is not False]
    if model:
        listed = [i for i in up if options[i].has_model]
        unknown = [i for i in up if options[i].has_model is None]
        preferred = listed or unknown or up
    else:
        preferred = up
    candidates = [i for i in preferred if not options[i].at_cap]
    idle_loaded = {i for i in candidates if options[i].loaded and options[i].active == 0}
    holds = (
        affine is not None
        and affine in candidates
        and not (options[affine].saturated and idle_loaded - {affine})
    )

    def key(i: int) -> tuple[bool, bool, float, int, int]:
        o = options[i]
        return (model and not o.loaded, not (holds and i == affine), o.load, o.picked, i)

    def reasons(i: int) -> tuple[str, ...]:
        words: list[str] = []
        if model:
            words.append(LOADED if options[i].loaded else COLD)
        if holds and i == affine:
            words.append(AFFINITY)
        else:
            words.append(LEAST_BUSY if len(candidates) > 1 else ONLY)
            if affine is not None:
                words.append(YIELDED)
        return tuple(words)

    down = [i for i, o in enumerate(options) if o.up is False and not o.at_cap]
    # Tried only after every candidate failed to connect (the proxy adds FAILOVER).
    last_resort = [
        Ranked(i, (LOADED if options[i].loaded else COLD,) if model else ())
        for i in sorted(down, key=key)
    ]
    return [Ranked(i, reasons(i)) for i in sorted(candidates, key=key)] + last_resort


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
