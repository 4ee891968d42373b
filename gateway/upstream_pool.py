"""Several upstreams behind one node: health checks, model-aware routing, failover.

For a handful of machines (a desktop with a GPU and a NUC, say) the gateway
can spread requests itself:

* every `upstream_check_interval` seconds each upstream is asked for its
  models (Ollama's /api/tags or /v1/models); an upstream that does not answer
  is marked down until it answers again;
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
from collections.abc import Callable
from typing import Any

import aiohttp

from .errors import GatewayError
from .settings import Settings
from .upstream import Upstream

log = logging.getLogger("fognode.upstreams")

# Nothing was sent: another upstream may take the request.
UNREACHABLE = frozenset({"upstream_unreachable", "upstream_connect_timeout", "upstream_starting"})


def _has(models: frozenset[str], name: str) -> bool:
    return name in models or (":" not in name and f"{name}:latest" in models)


class UpstreamPool:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        urls = settings.upstream_urls or [settings.upstream_base]
        self.members = [Upstream(settings, url) for url in urls]
        self.cap = settings.upstream_max_concurrent
        self._task: asyncio.Task[None] | None = None
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
        return self.settings.upstream_kind

    @property
    def single(self) -> bool:
        return len(self.members) == 1

    async def start(self) -> None:
        for member in self.members:
            await member.start()
        # Several upstreams need checks to route; an OpenAI-compatible one needs
        # its model list to answer "model not found" the way clients expect.
        if not self.single or self.kind != "ollama":
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
            async with asyncio.timeout(self.settings.readiness_timeout):
                names = await member.model_names()
        except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError):
            if member.healthy is not False:
                log.warning("upstream %s is down", member.base)
            member.healthy = False
            return
        if member.healthy is False:
            log.info("upstream %s is back", member.base)
        member.healthy = True
        member.models = frozenset(names)

    async def refresh(self) -> None:
        await asyncio.gather(*(self._check(m) for m in self.members))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.upstream_check_interval)
            await self.refresh()

    async def version(self) -> str | None:
        for member in self.members:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                return await member.version()
        return None

    async def model_names(self) -> list[str]:
        """Union over the upstreams that answer; raises if none does."""
        results = await asyncio.gather(
            *(m.model_names() for m in self.members), return_exceptions=True
        )
        names = {n for r in results if isinstance(r, list) for n in r}
        if all(isinstance(r, BaseException) for r in results):
            first = results[0]
            assert isinstance(first, BaseException)
            raise first
        return sorted(names)

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
