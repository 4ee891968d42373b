"""Several upstreams behind one node: health probes, warm-model routing, failover.

For a handful of machines (a desktop with a GPU and a NUC, say) the gateway
can spread requests itself:

* every `upstream_check_interval` seconds each upstream is asked for its
  models (Ollama's /api/tags or /v1/models) and for the ones in its memory
  (Ollama's /api/ps; an OpenAI-compatible server's served models are, unless
  it is llama.cpp's server and says it sleeps), and llama.cpp's server for
  its slots and how many are busy (/props, /metrics);
  an upstream that does not answer is marked down until it answers again.
  This is the one place model lists are fetched: /readyz, the mDNS
  announcement, the listings' ``fognode`` field and routing read what it
  found (after a model is pulled or removed through the node, at once).
  With worker processes the supervisor's pool probes, once for the node,
  and each worker's pool follows what it found (:meth:`UpstreamPool.follow`);
* a request for a model goes to an upstream that has it, by the rule in
  routing/order.py: loaded first, then the one that served the
  conversation before (routing/affinity.py), then the least busy;
* if the chosen upstream cannot be reached (connect refused or timed out,
  so nothing was sent), the next candidate is tried: failover happens only
  before the first byte, never after Ollama may have started generating;
* each upstream can have its own concurrency cap.

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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ...routing import warm
from ...routing.affinity import AffinityTable, ConversationMemory
from ...routing.conversation import Conversation
from ...routing.order import Option, rank
from ..core.errors import GatewayError
from .hop import ConnectFailed, HopError
from .upstream import Upstream, UpstreamOptions, describe

log = logging.getLogger("fognode.upstreams")


@dataclass(frozen=True, slots=True)
class Finding:
    """What the last probe found of one upstream: what a worker's pool takes
    from its supervisor's (:meth:`UpstreamPool.findings`, :meth:`UpstreamPool.follow`)."""

    healthy: bool | None  # None: not probed yet
    error: str | None
    models: tuple[str, ...]
    loaded: tuple[warm.LoadedModel, ...]
    slots: int | None  # llama.cpp's server: its slots, and how many are busy
    slots_busy: int | None


@dataclass(frozen=True)
class PoolState:
    """Whether the node can answer, after a probe of every upstream (/readyz)."""

    ready: bool  # at least one upstream answered
    models: list[str]  # the union of their models
    version: str | None  # Ollama's version, when it is Ollama
    error: str | None  # why none answered


def _has(models: frozenset[str], name: str) -> bool:
    return name in models or (":" not in name and f"{name}:latest" in models)


@dataclass(frozen=True)
class Choice:
    member: Upstream
    position: int  # 1-based, in the order the upstreams are configured
    reasons: tuple[str, ...]  # routing/order.py's words; empty with one upstream


@dataclass(frozen=True)
class Route:
    """The upstreams to try for one request, best first (none at its cap)."""

    choices: list[Choice]
    model: str | None
    conversation: Conversation | None


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
        for member in self.members:
            await member.start()
        if self._probe_elsewhere is not None:
            return  # the supervisor probes, and tells
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="fognode-upstream-probes")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for member in self.members:
            await member.close()

    # --- health and models ------------------------------------------------------
    async def _probe(self, member: Upstream) -> None:
        if member.local is not None and member.local.not_ready() is not None:
            return  # loading or restarting; it triggers a refresh once it serves
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
            failure = f"no answer within {self.options.check_timeout:g}s"
        except ConnectFailed as exc:
            failure = f"cannot connect ({exc.reason})"
        except (HopError, ValueError, AttributeError) as exc:
            failure = f"unexpected answer ({describe(exc)})"
        else:
            if member.healthy is False:
                log.info("upstream %s is back", member.base)
            member.healthy, member.last_error, member.models = True, None, frozenset(names)
            member.loaded, member.warmed = loaded, set()
            member.slots, member.slots_busy = slots, busy
            return
        if member.healthy is not False:
            log.warning("upstream %s is down: %s", member.base, failure)
        member.healthy, member.last_error = False, failure

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
            member.healthy, member.last_error = found.healthy, found.error
            member.models = frozenset(found.models)
            member.loaded = {entry.name: entry for entry in found.loaded}
            member.slots, member.slots_busy = found.slots, found.slots_busy
            if found.healthy:  # as a probe here: what requests warmed is now in the list
                member.warmed = set()
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
        if _has(frozenset(member.warmed), model):
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
        answered = [m for m in self.members if m.healthy]
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

    def lacks_model(self, model: str) -> bool:
        """True when every upstream that reported its models lacks this one.

        Only used for OpenAI-compatible upstreams, which (llama.cpp's server,
        for one) answer any model name with the one they have; Ollama answers
        404 itself and its list may lag behind a pull.
        """
        known = [m for m in self.members if m.healthy and m.models]
        return bool(known) and not any(_has(m.models, model) for m in known)

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
        """The upstreams to try for a request, best first, with the reasons
        (routing/order.py); none at its cap, so an empty route means all are.
        ``affine``: what :meth:`recall` found for ``conversation``."""
        if self.single:
            only = self.members[0]
            return Route([] if self.at_cap(only) else [Choice(only, 1, ())], model, None)
        now = time.time()
        options = [
            Option(
                up=m.healthy,
                has_model=(_has(m.models, model) if m.models else None) if model else True,
                loaded=bool(model) and self.is_loaded(m, model or "", now),
                active=m.active,
                cap=self.cap,
                picked=m.picked,
                slots=m.slots or 0,
            )
            for m in self.members
        ]
        ranked = rank(options, model=model is not None, affine=affine)
        choices = [Choice(self.members[r.position], r.position + 1, r.reasons) for r in ranked]
        return Route(choices, model, conversation)

    def sending(self, choice: Choice) -> None:
        """The request goes to this upstream now: among equals, the others are next."""
        choice.member.picked = next(self._turns)

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

    def mark_down(self, member: Upstream, exc: GatewayError) -> None:
        if not self.single:
            log.warning("upstream %s failed (%s); trying the next one", member.base, exc.code)
            member.healthy = False


# The node's pool, on the app: the proxy forwards through it, the pages read it.
UPSTREAM = web.AppKey("fognode.upstream", UpstreamPool)
