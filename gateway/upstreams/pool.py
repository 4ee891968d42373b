"""Several upstreams behind one node: health, placement, waiting, failover.

For a handful of machines (a desktop with a GPU and a NUC, say) the gateway
can spread requests itself:

* every `upstream_check_interval` seconds each upstream is asked for its
  models (Ollama's /api/tags or /v1/models) and for the ones in its memory
  (Ollama's /api/ps; an OpenAI-compatible server's served models are, unless
  it is llama.cpp's server and says it sleeps), and llama.cpp's server for
  its slots and how many are busy (/props, /metrics).
  This is the one place model lists are fetched: /readyz, the mDNS
  announcement, the listings' ``fognode`` field, the model check before the
  queue (:meth:`UpstreamPool.who_serves`) and routing read what it found
  (after a model is pulled or removed through the node, at once).
  With worker processes the supervisor's pool probes, once for the node,
  and each worker's pool follows what it found (:meth:`UpstreamPool.follow`);
* each upstream has a circuit breaker (routing/breaker.py): a failure to
  connect takes it out at once, other failures after a few in a row; it is
  probed (the same check, for it alone) until it answers, and then back in.
  An answer "503 busy" is load: it is full for a moment, not gone;
* a request for a model goes where it can start soonest, by the rule in
  routing/order.py: loaded with a slot free first, else by expected start
  (queue times recent service time, plus the load time for a cold one),
  keeping the conversation on the upstream that served it before when that
  costs no wait. An upstream that is out is tried only when no live one has
  the model;
* each upstream can have its own concurrency cap; when the upstream a
  request should go to is at its cap, the request waits here for a slot
  (:meth:`UpstreamPool.take`), first come first served per slot, bounded by
  the queue timeout. The wait is here and not in admission because only the
  pool knows which upstreams have the request's model; the request already
  holds its admission slot, and its heartbeats go on (keepalive.py);
* if the chosen upstream cannot be reached (connect refused or timed out,
  so nothing was sent) or answers busy, the next one is tried: failover
  happens only before the first byte, never after Ollama may have started
  generating.

Model lists (/v1/models, /api/tags, /api/ps) are the union over the healthy
upstreams. This is deliberately not a scheduler; for more than a few
machines, point fognode at a vLLM or Ray Serve cluster as a single
OpenAI-compatible upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ...routing import warm
from ...routing.affinity import AffinityTable, ConversationMemory
from ...routing.conversation import Conversation
from ...routing.holders import Holders, holders, model_key
from ...routing.order import DOWN, Option, rank
from ...supervision.breaker import State
from ..core.errors import GatewayError
from .hop import ConnectFailed, HopError
from .upstream import Upstream, UpstreamOptions, describe

log = logging.getLogger("fognode.upstreams")


@dataclass(frozen=True)
class PoolState:
    """Whether the node can answer, after a probe of every upstream (/readyz)."""

    ready: bool  # at least one upstream answered
    models: list[str]  # the union of their models
    version: str | None  # Ollama's version, when it is Ollama
    error: str | None  # why none answered


# While requests wait for a slot, how often the pool looks again without an
# event (a request that ends is one): expected starts grow as requests run
# long, and busy answers and breakers expire.
WAIT_TICK = 0.5
# The model check asks the upstreams again before it says "not here", at most
# this often (Ollama's list may lag behind a pull made on its own machine).
RECHECK_SECONDS = 1.0
# What decides whether an upstream's failure takes it out at once.
_CANNOT_CONNECT = frozenset({"upstream_unreachable", "upstream_connect_timeout"})


@dataclass(frozen=True, slots=True)
class Finding:
    """What the last probe found of one upstream: what a worker's pool takes
    from its supervisor's (:meth:`UpstreamPool.findings`, :meth:`UpstreamPool.follow`)."""

    healthy: bool | None  # the breaker's verdict (False: out); None: not probed yet
    answered: bool | None  # did the last probe get an answer
    error: str | None
    models: tuple[str, ...]
    loaded: tuple[warm.LoadedModel, ...]
    slots: int | None  # llama.cpp's server: its slots, and how many are busy
    slots_busy: int | None


@dataclass(frozen=True)
class Choice:
    member: Upstream
    position: int  # 1-based, in the order the upstreams are configured
    reasons: tuple[str, ...]  # routing/order.py's words; empty with one upstream
    ready: bool = True  # below its cap: can be sent now (else the request waits for it)
    cold: bool = False  # the model was not loaded there when it was chosen
    sent: float = 0.0  # when its slot was taken (monotonic); 0: not taken


@dataclass(eq=False)
class Route:
    """One request's way through the pool: what it asks for, the upstreams the
    rule ranks for it (best first), and the ones it could not use."""

    choices: list[Choice]
    model: str | None
    conversation: Conversation | None
    affine: int | None = None  # 0-based position of the conversation's upstream
    tried: set[int] = field(default_factory=set)  # 0-based positions that failed it
    waited: bool = False  # it waited for a slot


@dataclass(eq=False)
class _Waiter:
    route: Route
    future: asyncio.Future[Choice | None]


class UpstreamPool:
    def __init__(
        self,
        urls: list[str],
        options: UpstreamOptions,
        *,
        memory: ConversationMemory | None = None,
        probe_elsewhere: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``memory``: the node's conversation table when this process does not
        hold it (a worker's: the supervisor does); used only when affinity is
        on with several upstreams. ``probe_elsewhere``: asks whoever probes the
        upstreams for the node (a worker's supervisor) to probe them now; the
        findings arrive through :meth:`follow`, and this pool probes nothing
        itself."""
        self.options = options
        self.members = [Upstream(url, options) for url in urls]
        self.cap = options.max_concurrent
        self._task: asyncio.Task[None] | None = None
        # Called after each probe of the upstreams (the mDNS announcement
        # follows the models; a supervisor tells its workers).
        self.on_probed: list[Callable[[], Awaitable[None]]] = []
        # Set by whoever chose the upstream at start: why this one, and the live
        # state of an upstream fognode runs itself (both shown by /readyz).
        self.choice: str | None = None
        self.local_state: Callable[[], dict[str, Any]] | None = None
        # Which upstream served a conversation last (only worth it with several).
        self.affinity: ConversationMemory | None = (
            (memory or AffinityTable(options.affinity_entries, options.affinity_seconds))
            if options.affinity and len(self.members) > 1
            else None
        )
        self._turns = itertools.count(1)
        self._probe_elsewhere = probe_elsewhere
        self._following: set[asyncio.Task[None]] = set()
        # Requests waiting for a slot, first come first served (take, _dispatch).
        self._waiters: deque[_Waiter] = deque()
        self._tick: asyncio.TimerHandle | None = None
        # Probes of upstreams whose breaker asked for one, by member.
        self._probes: dict[int, asyncio.Task[None]] = {}
        self._recheck: asyncio.Task[None] | None = None
        self._rechecked = -math.inf
        self._running = False  # between start and close: probes may be scheduled

    # --- the pool as one upstream (the status page, the log, the health probe) ---
    @property
    def base(self) -> str:
        return ", ".join(m.base for m in self.members)

    @property
    def kind(self) -> str:
        return self.options.kind

    @property
    def single(self) -> bool:
        return len(self.members) == 1

    async def start(self) -> None:
        self._running = True
        for member in self.members:
            await member.start()
        if self._probe_elsewhere is not None:
            return  # the supervisor probes, and tells
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="fognode-upstream-probes")

    async def close(self) -> None:
        self._running = False
        tasks = [t for t in (self._task, self._recheck, *self._probes.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._tick is not None:
            self._tick.cancel()
        for member in self.members:
            await member.close()

    # --- health and models ------------------------------------------------------
    async def _probe(self, member: Upstream) -> None:
        """Ask one upstream for its models; what it says (or not) feeds its breaker."""
        if member.local is not None and member.local.not_ready() is not None:
            return  # loading or restarting; it triggers a refresh once it serves
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.options.check_timeout):
                names = await member.model_names()
                try:
                    loaded = await member.loaded_models(names)
                except (HopError, ValueError, AttributeError) as exc:
                    log.debug("upstream %s: no list of loaded models (%s)", member.base, exc)
                    loaded = {}  # an Ollama before /api/ps: nothing known to be hot
                try:
                    slots, busy, sleeping = await member.engine_state()
                except (HopError, ValueError, AttributeError) as exc:
                    log.debug("upstream %s: no slots known (%s)", member.base, exc)
                    slots, busy, sleeping = None, None, False
                if sleeping:
                    loaded = {}  # unloaded until the next request loads it again
        except TimeoutError:
            failure, definitive = f"no answer within {self.options.check_timeout:g}s", False
        except ConnectFailed as exc:
            failure, definitive = f"cannot connect ({exc.reason})", True
        except (HopError, ValueError, AttributeError) as exc:
            failure, definitive = f"unexpected answer ({describe(exc)})", False
        else:
            member.answered, member.last_error, member.models = True, None, frozenset(names)
            member.loaded, member.warmed = loaded, set()
            member.slots, member.slots_busy = slots, busy
            if member.breaker.success(probe=True):
                log.info("upstream %s is back", member.base)
            self._verdict(member)
            return
        member.answered, member.last_error = False, failure
        if member.breaker.failure(definitive=definitive, started=started):
            log.warning("upstream %s is out: %s", member.base, failure)
        self._verdict(member)

    def _verdict(self, member: Upstream) -> None:
        """``healthy`` as the breaker has it; a probe if it asks for one; and
        the waiting requests looked at again, since what they can use changed."""
        if member.breaker.out:
            member.healthy = False
        elif member.answered or member.healthy is False:
            member.healthy = True
        self._schedule_probe(member)
        self._dispatch()

    def _schedule_probe(self, member: Upstream) -> None:
        at = member.breaker.probe_at()
        index = self.members.index(member)
        if at is None or index in self._probes or not self._running:
            return  # no probe asked for, one on its way, or the pool is not running
        task = asyncio.create_task(self._probe_when_due(member, at), name="fognode-upstream-probe")
        self._probes[index] = task

    async def _probe_when_due(self, member: Upstream, at: float) -> None:
        """The breaker's probe: the same probe, for this upstream alone (a
        worker asks its supervisor to probe, and follows what it finds)."""
        index = self.members.index(member)
        try:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            member.breaker.probing()
            if self._probe_elsewhere is not None:
                await self.refresh()
            else:
                await self._probe(member)
                await self._probed()
        except Exception:
            log.exception("probing upstream %s failed", member.base)
        finally:
            if self._probes.get(index) is asyncio.current_task():
                del self._probes[index]
        if member.breaker.state is State.HALF_OPEN:
            member.breaker.failure(definitive=True)  # no verdict came: out for longer
        self._schedule_probe(member)

    async def refresh(self) -> None:
        """Probe every upstream now, then tell whoever follows the results."""
        if self._probe_elsewhere is not None:
            await self._probe_elsewhere()  # what it found has arrived (follow) when this returns
            return
        await asyncio.gather(*(self._probe(m) for m in self.members))
        await self._probed()

    def findings(self) -> tuple[Finding, ...]:
        """What the last probe found of each upstream, for :meth:`follow` in
        another process."""
        return tuple(
            Finding(
                m.healthy,
                m.answered,
                m.last_error,
                tuple(sorted(m.models)),
                tuple(m.loaded.values()),
                m.slots,
                m.slots_busy,
            )
            for m in self.members
        )

    def follow(self, findings: Sequence[Finding]) -> None:
        """Take another pool's :meth:`findings` as this pool's probe (a worker:
        the supervisor's), at once; then tell whoever follows the results."""
        for member, found in zip(self.members, findings, strict=True):
            member.answered, member.last_error = found.answered, found.error
            member.models = frozenset(found.models)
            member.loaded = {entry.name: entry for entry in found.loaded}
            member.slots, member.slots_busy = found.slots, found.slots_busy
            if found.healthy:  # as a probe here: what requests warmed is now in the list
                member.warmed = set()
                if member.breaker.success(probe=True):
                    log.info("upstream %s is back", member.base)
            elif found.healthy is False:
                if member.breaker.state is State.HALF_OPEN:
                    member.breaker.failure(definitive=True)  # this worker's probe failed
                elif member.breaker.trip():
                    log.warning("upstream %s is out: %s", member.base, found.error)
            member.healthy = found.healthy
            self._verdict(member)
        if self.on_probed:
            task = asyncio.create_task(self._probed(), name="fognode-upstream-followed")
            self._following.add(task)
            task.add_done_callback(self._following.discard)

    async def _probed(self) -> None:
        for callback in self.on_probed:
            await callback()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.check_interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("upstream probe failed")

    def known_models(self) -> list[str]:
        """The models the upstreams that answered the last probe have."""
        return sorted({n for m in self.members if m.healthy for n in m.models})

    # --- hot models ---------------------------------------------------------------
    @staticmethod
    def is_loaded(member: Upstream, model: str, now: float) -> bool:
        """Is ``model`` in ``member``'s memory (its /api/ps, its one served model,
        or a model this node just sent a request for)?"""
        if member.warmed and model_key(model) in {model_key(n) for n in member.warmed}:
            return True
        entry = warm.find(member.loaded, model)
        return entry is not None and entry.hot(now)

    def hot_models(self) -> list[str]:
        """The models in the memory of an upstream that answered the last probe."""
        now = time.time()
        return sorted(
            {n for m in self.members if m.healthy for n in m.loaded if m.loaded[n].hot(now)}
            | {n for m in self.members if m.healthy for n in m.warmed}
        )

    def warmth(self, model: str) -> dict[str, object]:
        """The ``fognode`` field of a model in /v1/models: is it loaded, where the
        node knows its size in memory and expiry, and on how many upstreams."""
        now = time.time()
        on = [m for m in self.members if m.healthy and self.is_loaded(m, model, now)]
        entries = [e for m in on if (e := warm.find(m.loaded, model)) is not None]
        latest = max(entries, key=lambda e: e.expires or float("inf"), default=None)
        return {
            "loaded": bool(on),
            "size": latest.size if latest else None,
            "size_vram": latest.size_vram if latest else None,
            "expires_at": latest.expires_at if latest else None,
            "loaded_on": len(on),
        }

    def mark_warmth(self, listing: dict[str, object]) -> None:
        """Give each entry of an OpenAI model list its ``fognode`` field."""
        entries = listing.get("data")
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                entry["fognode"] = self.warmth(entry["id"])

    async def readiness(self) -> PoolState:
        """Probe every upstream now (for /readyz): ready when one answers."""
        await self.refresh()
        answered = [m for m in self.members if m.answered]
        version = None
        if answered and self.kind == "ollama":
            with contextlib.suppress(HopError, TimeoutError, ValueError):
                async with asyncio.timeout(self.options.check_timeout):
                    version = await answered[0].version()
        error = None if answered else next((m.last_error for m in self.members), None)
        return PoolState(bool(answered), self.known_models(), version, error)

    async def merged_listing(
        self, target: str, key: str, id_field: str, headers: CIMultiDict[str] | None = None
    ) -> dict[str, object]:
        """A model list (/v1/models, /api/tags, /api/ps) as the union over the
        upstreams that answer: ``key`` is the list in the JSON body, ``id_field``
        what identifies an entry in it; ``headers`` the client's, as forwarded."""
        members = [m for m in self.members if m.healthy is not False] or self.members

        async def fetch(member: Upstream) -> dict[str, object]:
            async with asyncio.timeout(self.options.check_timeout):
                body = await member.get_json(target, headers)
            return body if isinstance(body, dict) else {}

        results = await asyncio.gather(*(fetch(m) for m in members), return_exceptions=True)
        bodies = [r for r in results if isinstance(r, dict)]
        if not bodies:
            why = next((describe(r) for r in results if isinstance(r, BaseException)), "")
            raise GatewayError(
                502,
                f"No upstream answered the model list ({self.base}: {why}).",
                code="upstream_unreachable",
            )
        merged: dict[str, object] = dict(bodies[0])
        seen: set[object] = set()
        entries: list[object] = []
        for body in bodies:
            items = body.get(key)
            for item in items if isinstance(items, list) else []:
                ident = item.get(id_field) if isinstance(item, dict) else None
                if ident not in seen:
                    seen.add(ident)
                    entries.append(item)
        merged[key] = entries
        return merged

    def not_ready(self) -> tuple[str, float] | None:
        """When every upstream is one fognode runs and none serves yet: why, and
        seconds until the first likely will (for /readyz)."""
        if not all(m.local is not None for m in self.members):
            return None
        waits = [m.local.not_ready() for m in self.members if m.local is not None]
        if any(w is None for w in waits):
            return None
        return min((w for w in waits if w is not None), key=lambda w: w[1])

    def about(self) -> dict[str, Any]:
        about: dict[str, Any] = {}
        if self.choice:
            about["upstream_choice"] = self.choice
        if self.local_state is not None:
            about["embedded"] = self.local_state()
        return about

    # --- who can serve model m ---------------------------------------------------
    def lacks_model(self, model: str) -> bool:
        """True when every upstream that is in and reported its models lacks
        this one (fog placement hands such a request to a member; the proxy
        answers 404 for an OpenAI-compatible upstream, which would answer any
        name with the model it has)."""
        key = model_key(model)
        known = [m for m in self.members if m.healthy and m.models]
        return bool(known) and not any(key in m.model_keys for m in known)

    def holders(self, model: str) -> Holders:
        """The upstreams whose last known model list has ``model`` (and those
        whose list is unknown: an empty list counts as unknown, since some
        servers list nothing). An upstream that is out still has its models:
        a request for one only it has tries it, and hears why it failed."""
        return holders(model, [m.model_keys if m.models else None for m in self.members])

    async def who_serves(self, model: str) -> Holders:
        """Who can serve model m: the seam the model check before the queue asks
        (and the fog extends with its peers). Before it says "nobody", the
        upstreams are asked again (at most once a second for the node): a model
        pulled on Ollama's own machine is served without waiting for a check."""
        found = self.holders(model)
        if found.missing:
            await self._ask_again()
            found = self.holders(model)
        return found

    async def _ask_again(self) -> None:
        if self._recheck is None:
            if time.monotonic() - self._rechecked < RECHECK_SECONDS:
                return
            self._rechecked = time.monotonic()
            self._recheck = asyncio.create_task(self.refresh(), name="fognode-model-recheck")
            self._recheck.add_done_callback(self._rechecked_now)
        await asyncio.shield(self._recheck)

    def _rechecked_now(self, task: asyncio.Task[None]) -> None:
        self._recheck = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("checking the upstreams again failed: %s", task.exception())

    # --- routing ------------------------------------------------------------------
    async def recall(self, conversation: Conversation) -> int | None:
        """The position (0-based) of the upstream that served this conversation's
        previous turn, if the node remembers one (a first turn looks up nothing)."""
        if self.affinity is None or not conversation.lookups:
            return None
        return await self.affinity.recall(conversation.lookups)

    def route(
        self,
        model: str | None,
        conversation: Conversation | None = None,
        affine: int | None = None,
    ) -> Route:
        """The upstreams for a request, best first, with the reasons
        (routing/order.py); the first may be at its cap (``ready`` False: then
        waiting for it is the soonest start). ``affine``: what :meth:`recall`
        found for ``conversation``."""
        route = Route([], model, conversation, affine)
        route.choices = self._rank(route)
        return route

    def _rank(self, route: Route) -> list[Choice]:
        model = route.model
        now = time.time()
        if self.single:
            only = self.members[0]
            if 0 in route.tried:
                return []
            cold = bool(model) and not self.is_loaded(only, model or "", now)
            return [Choice(only, 1, (), ready=not self.at_cap(only), cold=cold)]
        clock = time.monotonic()
        key = model_key(model) if model else ""
        positions = [i for i in range(len(self.members)) if i not in route.tried]
        options: list[Option] = []
        for i in positions:
            m = self.members[i]
            options.append(
                Option(
                    up=False if m.breaker.out else m.healthy,
                    has_model=(key in m.model_keys if m.models else None) if model else True,
                    loaded=bool(model) and self.is_loaded(m, model or "", now),
                    active=m.active,
                    cap=self.cap,
                    picked=m.picked,
                    slots=m.slots or 0,
                    service=m.pace.service,
                    load_seconds=m.pace.load_seconds(self.options.load_seconds),
                    busy=m.breaker.busy_now(),
                    running_for=m.pace.busy_for(m.started[0], clock) if m.started else 0.0,
                )
            )
        affine = positions.index(route.affine) if route.affine in positions else None
        ranked = rank(options, model=model is not None, affine=affine)
        return [
            Choice(
                self.members[positions[r.position]],
                positions[r.position] + 1,
                r.reasons,
                ready=r.ready,
                cold=bool(model) and not options[r.position].loaded,
            )
            for r in ranked
        ]

    async def take(self, route: Route) -> Choice | None:
        """The upstream that sends ``route``'s request, its slot taken (give it
        back with :meth:`release`); None when nothing is left to try.

        When the best upstream for it is at its cap, the request waits here
        for a slot, in turn with the others waiting (a slot goes to the
        first waiting request that can use it), at most the queue timeout.
        """
        if not self._waiters:
            route.choices = self._rank(route)
            if not route.choices:
                return None
            if route.choices[0].ready:
                return self._claim(route.choices[0])
        waiter = _Waiter(route, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._dispatch()
        try:
            async with asyncio.timeout(self.options.wait_timeout):
                choice = await waiter.future
        except BaseException as exc:
            future = waiter.future
            if future.done() and not future.cancelled() and (given := future.result()):
                self.release(given)  # handed a slot just as it gave up: pass it on
            else:
                future.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise GatewayError(
                    503,
                    f"Waited {self.options.wait_timeout:g}s for an upstream with a free slot "
                    f"(each takes {self.cap} at once); retry later.",
                    code="upstreams_busy",
                    headers={"Retry-After": "1"},
                ) from None
            raise
        route.waited = True
        return choice

    @property
    def waiting(self) -> int:
        """Requests waiting here for a slot on an upstream."""
        return len(self._waiters)

    def place(self, route: Route) -> int | None:
        """1 for the next request to get a slot; None when not waiting."""
        for number, waiter in enumerate(self._waiters, 1):
            if waiter.route is route:
                return number
        return None

    def elsewhere(self, route: Route, choice: Choice) -> bool:
        """Can a live upstream other than ``choice`` (which answered busy) take
        the request? Not one that is out: its refusal would hide the busy answer."""
        if self.single:
            return False
        others = Route([], route.model, route.conversation, route.affine)
        others.tried = route.tried | {choice.position - 1}
        choices = self._rank(others)
        return bool(choices) and DOWN not in choices[0].reasons

    def _dispatch(self) -> None:
        """Hand free slots to waiting requests, first come first served."""
        for waiter in list(self._waiters):
            if not any(not self.at_cap(m) for m in self.members):
                break  # nobody can go: no slot is free anywhere
            if waiter.future.done():  # gave up
                self._waiters.remove(waiter)
                continue
            choices = waiter.route.choices = self._rank(waiter.route)
            if not choices:
                self._waiters.remove(waiter)
                waiter.future.set_result(None)
            elif choices[0].ready:
                self._waiters.remove(waiter)
                waiter.future.set_result(self._claim(choices[0]))
        if self._waiters and self._tick is None:
            self._tick = asyncio.get_running_loop().call_later(WAIT_TICK, self._ticked)

    def _ticked(self) -> None:
        self._tick = None
        self._dispatch()

    def _claim(self, choice: Choice) -> Choice:
        member = choice.member
        member.active += 1
        sent = time.monotonic()
        member.started.append(sent)
        member.picked = next(self._turns)  # among equals, the others are next
        return replace(choice, sent=sent)

    def release(self, choice: Choice) -> None:
        """The request is done with this upstream: its slot goes to the next waiting."""
        member = choice.member
        member.active -= 1
        with contextlib.suppress(ValueError):
            member.started.remove(choice.sent)
        self._dispatch()

    # --- what happened to a request -------------------------------------------------
    def answered(self, choice: Choice, seconds: float) -> None:
        """The upstream answered (not busy), ``seconds`` after sending."""
        member = choice.member
        if member.breaker.success():
            log.info("upstream %s answers again", member.base)
        if member.healthy is not True:
            member.healthy = True
            self._verdict(member)
        member.pace.answered(seconds, cold=choice.cold)

    def finished(self, choice: Choice) -> None:
        """Its answer ended normally: how long a slot stays taken there."""
        choice.member.pace.finished(choice.sent, time.monotonic())

    def busy(self, choice: Choice, retry_after: float | None) -> None:
        """It answered 503 busy: full for a moment, alive (routing/breaker.py)."""
        choice.member.breaker.busy(retry_after)
        self._verdict(choice.member)

    def failed(self, choice: Choice, exc: GatewayError) -> None:
        """Sending to it failed (before an answer): its breaker counts it."""
        if exc.code == "upstream_starting":
            return  # fognode runs it and knows: not the upstream's failure
        member = choice.member
        member.last_error = exc.message
        took_out = member.breaker.failure(
            definitive=exc.code in _CANNOT_CONNECT, started=choice.sent or None
        )
        if took_out and not self.single:
            log.warning("upstream %s is out (%s); trying the next one", member.base, exc.code)
        self._verdict(member)

    def served(self, route: Route, choice: Choice) -> None:
        """The upstream answered the request: it holds the conversation now,
        and the model is in its memory whatever the last probe said."""
        model, member = route.model, choice.member
        if model is not None:
            # As the upstream lists it ("llama3.2" is Ollama's "llama3.2:latest").
            latest = f"{model}:latest"
            member.warmed.add(latest if ":" not in model and latest in member.models else model)
        if self.affinity is not None and route.conversation is not None:
            self.affinity.remember(route.conversation.record, choice.position - 1)

    def at_cap(self, member: Upstream) -> bool:
        return bool(self.cap) and member.active >= self.cap


# The node's pool, on the app: the proxy forwards through it, the pages read it.
UPSTREAM = web.AppKey("fognode.upstream", UpstreamPool)
