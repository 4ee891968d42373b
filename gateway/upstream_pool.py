"""Several upstreams behind one node: health checks, model-aware routing, failover.

For a handful of machines (a desktop with a GPU and a NUC, say) the gateway
can spread requests itself:

* every `upstream_check_interval` seconds each upstream is asked for its
  models (Ollama's /api/tags or /v1/models); an upstream that does not answer
  is marked down until it answers again. This is the one place model lists
  are fetched: /readyz, the mDNS announcement and routing read what it found
  (after a model is pulled or removed through the node, at once);
* a request for a model goes to an upstream that has it, the least busy
  first (requests in flight relative to its cap);
* if the chosen upstream cannot be reached (connect refused or timed out,
  so nothing was sent), the next candidate is tried: failover happens only
  before the first byte, never after Ollama may have started generating;
* each upstream can have its own concurrency cap.

Model lists (/v1/models, /api/tags) are the union over the healthy upstreams.
This is deliberately not a scheduler; for more than a few machines, point
fognode at a vLLM or Ray Serve cluster as a single OpenAI-compatible upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import GatewayError
from .hop import ConnectFailed, HopError
from .upstream import Upstream, UpstreamOptions, describe

log = logging.getLogger("fognode.upstreams")


@dataclass(frozen=True)
class PoolState:
    """What a check of every upstream found, for /readyz."""

    ready: bool  # at least one upstream answered
    models: list[str]  # the union of their models
    version: str | None  # Ollama's version, when it is Ollama
    error: str | None  # why none answered


def _has(models: frozenset[str], name: str) -> bool:
    return name in models or (":" not in name and f"{name}:latest" in models)


class UpstreamPool:
    def __init__(self, urls: list[str], options: UpstreamOptions) -> None:
        self.options = options
        self.members = [Upstream(url, options) for url in urls]
        self.cap = options.max_concurrent
        self._task: asyncio.Task[None] | None = None
        # Called after each check (the mDNS announcement follows the models).
        self.on_checked: list[Callable[[], Awaitable[None]]] = []
        # Set by whoever chose the upstream at start: why this one, and the live
        # state of an upstream fognode runs itself (both shown by /readyz).
        self.choice: str | None = None
        self.local_state: Callable[[], dict[str, Any]] | None = None

    # --- what the single-upstream code used -----------------------------------
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
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="fognode-upstream-checks")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for member in self.members:
            await member.close()

    # --- health and models ------------------------------------------------------
    async def _check(self, member: Upstream) -> None:
        if member.local is not None and member.local.not_ready() is not None:
            return  # loading or restarting; it triggers a refresh once it serves
        try:
            async with asyncio.timeout(self.options.check_timeout):
                names = await member.model_names()
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
            return
        if member.healthy is not False:
            log.warning("upstream %s is down: %s", member.base, failure)
        member.healthy, member.last_error = False, failure

    async def refresh(self) -> None:
        """Check every upstream now, then tell whoever follows the results."""
        await asyncio.gather(*(self._check(m) for m in self.members))
        for callback in self.on_checked:
            await callback()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.check_interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("upstream check failed")

    def known_models(self) -> list[str]:
        """The models the upstreams that answered the last check have."""
        return sorted({n for m in self.members if m.healthy for n in m.models})

    async def check(self) -> PoolState:
        """Check every upstream now (for /readyz): ready when one answers."""
        await self.refresh()
        answered = [m for m in self.members if m.healthy]
        version = None
        if answered and self.kind == "ollama":
            with contextlib.suppress(HopError, TimeoutError, ValueError):
                async with asyncio.timeout(self.options.check_timeout):
                    version = await answered[0].version()
        error = None if answered else next((m.last_error for m in self.members), None)
        return PoolState(bool(answered), self.known_models(), version, error)

    async def merged_listing(self, target: str, key: str, id_field: str) -> dict[str, object]:
        """A model list (/v1/models, /api/tags) as the union over the upstreams
        that answer: ``key`` is the list in the JSON body, ``id_field`` what
        identifies an entry in it."""
        members = [m for m in self.members if m.healthy is not False] or self.members

        async def fetch(member: Upstream) -> dict[str, object]:
            async with asyncio.timeout(self.options.check_timeout):
                body = await member.get_json(target)
            return body if isinstance(body, dict) else {}

        results = await asyncio.gather(*(fetch(m) for m in members), return_exceptions=True)
        bodies = [r for r in results if isinstance(r, dict)]
        if not bodies:
            raise GatewayError(
                502,
                f"No upstream answered the model list ({self.base}).",
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
    def candidates(self, model: str | None) -> list[Upstream]:
        """Upstreams to try, best first: up, has the model, least busy."""
        if self.single:
            return list(self.members)

        def load(m: Upstream) -> float:
            return m.active / self.cap if self.cap else float(m.active)

        up = [m for m in self.members if m.healthy is not False]
        if model:
            with_model = [m for m in up if _has(m.models, model)]
            unknown = [m for m in up if not m.models]
            preferred = with_model or unknown or up
        else:
            preferred = up
        ordered = sorted(preferred, key=load)
        # Last resort: the ones marked down (maybe they are back).
        ordered += [m for m in self.members if m not in ordered and m.healthy is False]
        return ordered

    def at_cap(self, member: Upstream) -> bool:
        return bool(self.cap) and member.active >= self.cap

    def mark_down(self, member: Upstream, exc: GatewayError) -> None:
        if not self.single:
            log.warning("upstream %s failed (%s); trying the next one", member.base, exc.code)
            member.healthy = False
