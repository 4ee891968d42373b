"""Who is in the fog now, and what each member last said.

Candidates come from mDNS (a node that announces a peer port) and from the
static list (``FOGNODE_PEERS``, where mDNS does not cross); a candidate
becomes a member only once it has answered a state request over mutual TLS
with this fog's CA (the gateway's node service asks, and reports here what
it found). So everything in this table about a member was said by a holder
of a node certificate; what a candidate announced is only where to ask.

What the table decides, with an injected clock so that it can be tested
without waiting:

* when to ask each candidate next: every ``refresh`` seconds, moved by up to
  ``jitter`` of it at random so that members do not ask each other in step;
  a candidate that fails is asked again at once, then as its circuit
  breaker says (the upstreams' breaker, supervision/breaker.py: after
  ``refresh``, doubling, never less often than every ``retry_max``
  seconds), so a member that comes back is back within that bound; one
  whose handshake was refused (another CA, no marker) every
  ``refused_retry``;
* whether a member counts: it answered, its state is younger than
  ``stale_after`` (a member that stops answering is out within that bound
  even when no request notices), and its breaker is closed (a member that
  refuses connections is out after ``failures_to_open`` tries in a row,
  within about a second, not after the staleness bound; the next answer
  closes it again);
* one entry per node: a node found at two addresses (two domains, IPv4 and
  IPv6, mDNS and the static list) counts once, by the node id it states;
  and this node itself, found by its own browser, never counts.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..supervision.breaker import Breaker, BreakerOptions
from .state import PeerState


@dataclass(frozen=True)
class TableOptions:
    refresh: float = 1.5  # seconds between state requests to a member
    jitter: float = 0.2  # up to this fraction of refresh, either way, at random
    stale_after: float = 5.0  # a state older than this is not used
    failures_to_open: int = 2  # failures in a row that take a member out
    retry_max: float = 5.0  # longest wait between tries of a failing candidate
    refused_retry: float = 30.0  # between tries of one whose handshake was refused

    @property
    def breaker(self) -> BreakerOptions:
        """A member's breaker in the table's terms: out after
        ``failures_to_open`` failures or ``stale_after`` seconds of failing,
        probed every ``refresh`` seconds, doubling up to ``retry_max``."""
        return BreakerOptions(
            failures=self.failures_to_open,
            window=self.stale_after,
            cooldown=self.refresh,
            max_cooldown=self.retry_max,
        )


@dataclass(frozen=True)
class MembershipOptions:
    """How the node's membership service (gateway/node/fog.py) finds and asks."""

    own_id: str  # this node's id: found by its own browser, it is left out
    port: int  # the peer port: the default for static peers
    peers: tuple[str, ...]  # the static list (FOGNODE_PEERS)
    table: TableOptions
    ask_timeout: float = 1.0  # connect, handshake and answer of one state request
    mdns: bool = True  # also look for members with mDNS
    interfaces: list[str] | None = None  # where to browse (None: every interface)


class Source(StrEnum):
    MDNS = "mdns"
    STATIC = "static"


class Standing(StrEnum):
    """What a candidate is to this node, for the status page and ``fognode discover``."""

    MEMBER = "member"  # answered over mutual TLS, recently
    WAITING = "waiting"  # not asked yet, or no answer so far
    OUT = "out"  # was a member; failed or fell silent (the breaker is open)
    REFUSED = "refused"  # its certificate is not a member's: never sent anything
    SELF = "self"  # this node, found by its own browser


@dataclass
class _Candidate:
    address: str  # "host:port" of its peer port, the table's key
    host: str
    port: int
    breaker: Breaker  # out and back in, as an upstream is
    sources: set[Source] = field(default_factory=set)
    state: PeerState | None = None
    identity: str = ""  # the name in its node certificate
    answered_at: float | None = None
    last_error: str | None = None
    refused: bool = False
    own: bool = False
    next_ask: float = 0.0


@dataclass(frozen=True)
class Member:
    """A member of the fog as placement sees it: where to reach it, what it said."""

    address: str  # "host:port" of its peer port
    identity: str  # the name in its node certificate
    state: PeerState
    age: float  # seconds since it said it

    @property
    def node(self) -> str:
        return self.state.node

    def to_json(self) -> dict[str, object]:
        return {
            "address": self.address,
            "identity": self.identity,
            "state": self.state.as_dict(),
            "age": self.age,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Member:
        address, identity, age = data["address"], data["identity"], data["age"]
        if not (isinstance(address, str) and isinstance(identity, str)):
            raise ValueError("a member needs an address and an identity")
        if not isinstance(age, int | float):
            raise ValueError("a member's age is a number")
        return cls(address, identity, PeerState.from_dict(data["state"]), float(age))


@dataclass(frozen=True)
class CandidateView:
    """One candidate as the status page and ``fognode discover`` show it."""

    address: str
    standing: Standing
    sources: tuple[str, ...]
    identity: str
    state: PeerState | None
    age: float | None
    last_error: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "address": self.address,
            "standing": self.standing.value,
            "sources": list(self.sources),
            "identity": self.identity,
            "state": self.state.as_dict() if self.state is not None else None,
            "age": self.age,
            "last_error": self.last_error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CandidateView:
        state = data.get("state")
        age = data.get("age")
        return cls(
            str(data["address"]),
            Standing(data["standing"]),
            tuple(str(s) for s in data.get("sources") or ()),
            str(data.get("identity") or ""),
            PeerState.from_dict(state) if state is not None else None,
            float(age) if age is not None else None,
            str(data["last_error"]) if data.get("last_error") is not None else None,
        )


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    text = address.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port else default_port
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, default_port


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MemberTable:
    def __init__(
        self,
        options: TableOptions,
        *,
        own_id: str,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self.own_id = own_id
        self.clock = clock
        self.rng = rng or random.Random()
        self._candidates: dict[str, _Candidate] = {}

    # --- candidates ---------------------------------------------------------------
    def offer(self, host: str, port: int, source: Source) -> str:
        """A place to ask (mDNS found it, or the static list names it); its key."""
        address = join_address(host, port)
        candidate = self._candidates.get(address)
        if candidate is None:
            breaker = Breaker(self.options.breaker, clock=self.clock)
            candidate = self._candidates[address] = _Candidate(address, host, port, breaker)
            candidate.next_ask = self.clock()  # ask at once
        candidate.sources.add(source)
        return address

    def withdraw(self, address: str, source: Source) -> None:
        """That source no longer names it (an mDNS goodbye); gone when none
        does, unless it is a member now: mDNS only says where to ask, and an
        announcement can flicker (a name taken over and given back while
        nodes resolve a conflict) while the node answers on. Such a member
        stays until it fails or falls silent (:meth:`_forget_unnamed`); a
        node that drains withdraws its announcement and is still asked, so
        the fog knows it drains."""
        candidate = self._candidates.get(address)
        if candidate is None:
            return
        candidate.sources.discard(source)
        self._forget_unnamed(candidate)

    def _forget_unnamed(self, candidate: _Candidate) -> None:
        """A candidate no source names, and that is not a member now, is gone."""
        if candidate.sources:
            return
        if self._standing(candidate, self.clock()) is not Standing.MEMBER:
            self._candidates.pop(candidate.address, None)

    def addresses(self) -> list[str]:
        return list(self._candidates)

    def where(self, address: str) -> tuple[str, int] | None:
        candidate = self._candidates.get(address)
        return (candidate.host, candidate.port) if candidate is not None else None

    # --- what asking found ------------------------------------------------------------
    def answered(self, address: str, state: PeerState, identity: str) -> None:
        """It answered over mutual TLS with a member's certificate: a member now."""
        candidate = self._candidates.get(address)
        if candidate is None:
            return
        now = self.clock()
        candidate.state, candidate.identity = state, identity
        candidate.answered_at, candidate.last_error = now, None
        candidate.breaker.success()
        candidate.refused = False
        candidate.own = state.node == self.own_id
        candidate.next_ask = now + self._spread(self.options.refresh)

    def failed(self, address: str, reason: str) -> None:
        """No answer, a broken one, or a request to it failed before its first byte."""
        candidate = self._candidates.get(address)
        if candidate is None:
            return
        candidate.last_error = reason
        candidate.breaker.failure()
        self._forget_unnamed(candidate)
        # Soon enough to notice a blip within the staleness bound, then less often.
        now = self.clock()
        probe = candidate.breaker.probe_at()
        candidate.next_ask = now + self._spread(max(0.0, (probe or now) - now))

    def refused(self, address: str, reason: str) -> None:
        """Its certificate is not a member's (another CA, no marker): nothing goes to it."""
        candidate = self._candidates.get(address)
        if candidate is None:
            return
        candidate.refused, candidate.last_error = True, reason
        candidate.state, candidate.answered_at = None, None
        candidate.next_ask = self.clock() + self._spread(self.options.refused_retry)
        self._forget_unnamed(candidate)

    def delay(self, address: str) -> float | None:
        """Seconds until it should be asked again (None: no such candidate, or
        this node itself, which is never asked again)."""
        candidate = self._candidates.get(address)
        if candidate is None or candidate.own:
            return None
        self._forget_unnamed(candidate)  # an unnamed member that fell silent
        if address not in self._candidates:
            return None
        return max(0.0, candidate.next_ask - self.clock())

    def _spread(self, seconds: float) -> float:
        jitter = self.options.jitter
        return seconds * (1 + self.rng.uniform(-jitter, jitter))

    # --- who counts -------------------------------------------------------------------
    def _standing(self, candidate: _Candidate, now: float) -> Standing:
        if candidate.own:
            return Standing.SELF
        if candidate.refused:
            return Standing.REFUSED
        if candidate.answered_at is None:
            return Standing.WAITING
        fresh = now - candidate.answered_at <= self.options.stale_after
        return Standing.MEMBER if fresh and not candidate.breaker.out else Standing.OUT

    def members(self) -> list[Member]:
        """The members placement may use now: one per node, the freshest entry."""
        now = self.clock()
        best: dict[str, Member] = {}
        for candidate in self._candidates.values():
            if self._standing(candidate, now) is not Standing.MEMBER:
                continue
            assert candidate.state is not None and candidate.answered_at is not None
            member = Member(
                candidate.address,
                candidate.identity,
                candidate.state,
                now - candidate.answered_at,
            )
            known = best.get(member.node)
            if known is None or member.age < known.age:
                best[member.node] = member
        return sorted(best.values(), key=lambda m: m.address)

    def views(self) -> list[CandidateView]:
        now = self.clock()
        return [
            CandidateView(
                c.address,
                self._standing(c, now),
                tuple(sorted(c.sources)),
                c.identity,
                c.state,
                now - c.answered_at if c.answered_at is not None else None,
                c.last_error,
            )
            for c in sorted(self._candidates.values(), key=lambda c: c.address)
        ]
