"""Which upstream serves, decided once at start, and the embedded model's wiring.

The rule, so that `fognode serve` answers chats on any machine and an
operator's choice is never second-guessed:

* an upstream the operator configured (upstream_url or upstream_urls, by
  flag, env var or file) is used as given, whether it answers or not;
* upstream_kind ollama, openai or embedded forces that kind;
* with nothing configured (upstream_kind auto), Ollama at its default
  address if it answers a short probe, else the embedded model (llama.cpp
  with a packaged model, SmolLM2 135M by default, or FOGNODE_EMBEDDED_MODEL).

The choice is logged in one line and shown by /readyz (``upstream_choice``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from pydantic import AnyHttpUrl

from ... import safejson
from ...embedded.model import ModelUnavailable, check_available
from ...embedded.options import DEFAULT_MODEL, EmbeddedOptions
from ...embedded.runtime import EmbeddedRuntime, describe
from ...embedded.supervisor import ServerStatus
from ..config.paths import data_dir
from ..config.settings import Settings
from .pool import UpstreamPool
from .upstream import without_password

log = logging.getLogger("fognode.upstream")

OLLAMA_PROBE_TIMEOUT = 1.5  # seconds; Ollama answers /api/version at once


def embedded_options(settings: Settings) -> EmbeddedOptions:
    return EmbeddedOptions(
        models_dir=data_dir() / "models",
        model=settings.embedded_model or DEFAULT_MODEL,
        alias=settings.embedded_model_alias,
        chat_template=settings.embedded_chat_template,
        context_size=settings.embedded_context_size,
        slots=settings.embedded_parallel,
        threads=settings.embedded_threads,
        gpu_layers=settings.embedded_gpu_layers,
        idle_seconds=settings.embedded_idle_seconds,
        prompt_cache_mib=settings.embedded_prompt_cache_mib,
        start_timeout=settings.embedded_start_timeout,
    )


@dataclass(frozen=True)
class UpstreamChoice:
    settings: Settings  # with a definite upstream_kind (and the engine's URL)
    reason: str  # one line for the log and /readyz
    runtime: EmbeddedRuntime | None = None


async def ollama_unreachable(base: str, wait_s: float) -> str | None:
    """None if Ollama answers at ``base``; else what happened instead."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=wait_s)) as http,
            http.get(f"{base}/api/version") as resp,
        ):
            if resp.status != 200:
                return f"HTTP {resp.status}"
            body = safejson.loads(await resp.read())
    except aiohttp.ClientConnectorError as exc:
        errno = exc.os_error.errno
        return os.strerror(errno) if errno else str(exc)
    except TimeoutError:
        return f"no answer within {wait_s:g}s"
    except (aiohttp.ClientError, ValueError) as exc:
        return f"not Ollama ({type(exc).__name__})"
    if not isinstance(body, dict) or "version" not in body:
        return "not Ollama"
    return None


async def choose_upstream(settings: Settings) -> UpstreamChoice:
    """Apply the rule above; raises ModelUnavailable when embedded is forced but cannot run."""
    kind = settings.upstream_kind
    base = settings.upstream_base
    shown = without_password(base)  # in the log and /readyz
    named = kind == "auto" and settings.upstream_configured
    if named:
        kind = "ollama"
    if kind in ("ollama", "openai"):
        where = ", ".join(without_password(url) for url in settings.upstream_urls) or shown
        name = "Ollama" if kind == "ollama" else "the OpenAI-compatible server"
        reason, level = f"{name} at {where}, as configured", logging.INFO
        # A URL named (--upstream-url) turns the embedded model off: if nothing
        # answers there, say so now rather than with the first 502.
        refused = await ollama_unreachable(base, OLLAMA_PROBE_TIMEOUT) if named else None
        if refused is not None:
            reason += (
                f", which does not answer now ({refused}): chats answer 502 until it does. "
                "Naming an upstream turns the embedded model off; without --upstream-url "
                "(FOGNODE_UPSTREAM_URL) fognode serves its embedded model when no Ollama answers"
            )
            level = logging.WARNING
        return _chosen(settings.model_copy(update={"upstream_kind": kind}), reason, level=level)
    options = embedded_options(settings)
    if kind == "embedded":
        check_available(options)  # forced: refusing to start beats serving 503s forever
        why = "upstream_kind=embedded"
    else:
        refused = await ollama_unreachable(base, OLLAMA_PROBE_TIMEOUT)
        if refused is None:
            return _chosen(
                settings.model_copy(update={"upstream_kind": "ollama"}),
                f"Ollama answers at {shown}: forwarding to it",
            )
        try:
            check_available(options)
        except ModelUnavailable as exc:
            return _chosen(
                settings.model_copy(update={"upstream_kind": "ollama"}),
                f"no upstream configured and nothing answers at {shown} ({refused}); {exc} "
                f"Forwarding to Ollama at {shown} anyway: start it, or set FOGNODE_UPSTREAM_URL.",
                level=logging.WARNING,
            )
        why = f"no upstream configured and no Ollama at {shown} ({refused})"
    runtime = EmbeddedRuntime(options)
    update: dict[str, object] = {
        "upstream_kind": "embedded",
        "upstream_url": AnyHttpUrl(runtime.url),
        "upstream_urls": [],
    }
    if "max_concurrent_requests" not in settings.model_fields_set:
        # Each slot answers one request at a time: queue the rest here, where a
        # client that leaves is dropped and Retry-After is estimated, rather
        # than inside the engine.
        update["max_concurrent_requests"] = options.slots
    return _chosen(
        settings.model_copy(update=update),
        f"{why}: serving the embedded model {options.model_alias} "
        f"(llama.cpp, {options.slots} slots, {options.engine_threads} threads)",
        runtime=runtime,
    )


def _chosen(
    settings: Settings,
    reason: str,
    *,
    runtime: EmbeddedRuntime | None = None,
    level: int = logging.INFO,
) -> UpstreamChoice:
    log.log(level, "upstream: %s", reason)
    return UpstreamChoice(settings, reason, runtime)


def install_upstream_choice(
    pool: UpstreamPool, reason: str, runtime: EmbeddedRuntime | None
) -> None:
    """The pool of the process that runs the embedded model, if chosen (one
    process, or the supervisor of workers): /readyz shows the choice and the
    engine's state, requests while it loads or restarts get 503 with
    Retry-After, and the pool probes again once it serves."""
    pool.choice = reason
    if runtime is None:
        return
    for member in pool.members:
        member.local = runtime.server
    pool.local_state = runtime.describe
    runtime.on_ready.append(pool.refresh)


def follow_upstream_choice(
    pool: UpstreamPool, reason: str, status: ServerStatus | None
) -> Callable[[ServerStatus], None]:
    """A worker process's side of :func:`install_upstream_choice`: its supervisor
    chose the upstream and runs the embedded model, if chosen; this pool
    follows the engine's state (requests while it loads or restarts get 503
    with Retry-After, as in one process). Returns what to call with each new
    state."""
    pool.choice = reason

    def follow(new: ServerStatus) -> None:
        # The model list follows too: the supervisor probes the upstreams when
        # the engine is ready, and every worker's pool follows what it found.
        for member in pool.members:
            member.local = new if member.base.rstrip("/") == new.url else None
        pool.local_state = lambda: describe(new)

    if status is not None:
        follow(status)
    return follow
