"""The status page: what an operator wants to see at a glance, on a phone too.

Rendered on the server (aiohttp-jinja2). The page is one template; the part
that changes (`_live.html`) is also served on its own, and a small script
(`static/status.js`, no build step) fetches it every few seconds and swaps
it in, so the numbers stay live without a reload and without a second copy
of the markup in JavaScript. The same script streams a model pull's
progress into a progress bar.

This module renders and streams; it collects nothing. The gateway builds a
:class:`StatusView` from its own state (upstream pool, admission, counters,
certificates, usage accounting when there is one) and hands it over, and
passes the pull as an async iterator of progress states (models/progress's
PullProgress has the shape of :class:`PullState`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .security import page_headers

HERE = Path(__file__).parent
TEMPLATES = web.AppKey("fognode.web.templates", jinja2.Environment)
STATIC_FILES = {
    "/static/status.css": "status.css",
    "/static/status.js": "status.js",
    "/static/favicon.svg": "favicon.svg",
}
NO_STORE = {"Cache-Control": "no-store"}


# --- what the page shows (the gateway fills these in) ---------------------------


@dataclass(frozen=True)
class CertView:
    names: Sequence[str]  # DNS names and IP addresses of the server certificate
    not_after: dt.datetime
    ca_name: str
    ca_fingerprint: str  # SHA-256, colon-separated

    @property
    def days_left(self) -> float:
        return (self.not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400


@dataclass(frozen=True)
class NodeView:
    name: str
    node_id: str
    version: str
    started: float  # Unix time
    listening: str  # where it listens, in words
    onboarding_url: str | None  # the phone onboarding page, when it serves one
    tls: CertView | None  # None: plain HTTP


@dataclass(frozen=True)
class ModelView:
    name: str
    loaded: bool | None  # in memory now; None: the upstream's state is not known


@dataclass(frozen=True)
class UpstreamView:
    url: str
    kind: str
    healthy: bool | None  # None: not checked yet
    error: str | None  # why the last check failed
    in_flight: int
    models: Sequence[ModelView]
    # The engine fognode runs itself: starting (loading the model), ready,
    # asleep (model unloaded after idle time), restarting; None otherwise.
    engine_state: str | None = None
    slots: int | None = None  # requests it runs at once, when it says


@dataclass(frozen=True)
class ClassView:
    """One priority class's part of the queue: who waits (user names only)."""

    name: str
    queued: int
    longest: float  # seconds the longest-waiting request of the class has waited
    users: Sequence[tuple[str, int]]  # (user, requests waiting), most first


@dataclass(frozen=True)
class LoadView:
    active_streams: int
    in_flight: int  # requests sent upstream and not finished
    queued: int
    slots_used: int
    capacity: int
    connections: int | None  # client connections open (None: not known)
    classes: Sequence[ClassView] = ()  # the queue by priority class, highest first


@dataclass(frozen=True)
class MinuteView:
    start: float  # Unix time of the minute's start
    requests: int
    client_errors: int  # 4xx, except clients that left (499)
    server_errors: int  # 5xx, and failures reported inside a 200 stream


@dataclass(frozen=True)
class ErrorView:
    at: float  # Unix time
    request_id: str
    method: str
    route: str  # the route's pattern, never the raw path
    status: int
    uid: str | None
    message: str  # scrubbed of anything shaped like a credential


@dataclass(frozen=True)
class UsageView:
    uid: str
    requests: int
    rejected: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class BudgetView:
    """A user past the warning share of a budget, until it resets."""

    uid: str
    budget: str  # "tokens" (per day) or "requests" (per minute)
    used: int
    limit: int
    resets: float  # Unix time

    @property
    def percent(self) -> int:
        return min(100, 100 * self.used // max(1, self.limit))


@dataclass(frozen=True)
class MemberView:
    """Another node of the fog, as this node last heard from it."""

    name: str  # the name in its node certificate ("" when it never answered)
    address: str  # its peer port
    standing: str  # member, out (not answering), refused (no node certificate), waiting
    models: Sequence[str]
    loaded: Sequence[str]
    slots_used: int
    capacity: int
    queued: int
    draining: bool
    handed: int  # requests this node handed to it (served there)
    received: int  # requests it handed to this node
    heard: float | None  # seconds since it last answered
    error: str | None  # why it is out or refused


@dataclass(frozen=True)
class FogView:
    name: str  # this node's name in its node certificate
    members: Sequence[MemberView]


@dataclass(frozen=True)
class StatusView:
    node: NodeView
    load: LoadView
    upstreams: Sequence[UpstreamView]
    minutes: Sequence[MinuteView]  # oldest first
    errors: Sequence[ErrorView]  # newest first
    usage: Sequence[UsageView] | None  # None: no usage accounting on this node (or no answer)
    usage_since: float | None = None  # Unix time the usage figures start at
    usage_error: str | None = None  # why there are no figures although accounting runs
    draining: bool = False  # the node takes no new local work (fognode drain)
    fog: FogView | None = None  # None: the node is no member of a fog
    budgets: Sequence[BudgetView] = ()  # users near a budget (quota_warn_at)
    # Why this node pulls no models (no Ollama behind it); None: it can, and the
    # page offers a pull.
    no_pulls: str | None = None

    @property
    def healthy(self) -> bool:
        return any(u.healthy for u in self.upstreams)


@dataclass(frozen=True)
class Viewer:
    """Who looks at the page, and the token their forms send back."""

    uid: str
    csrf: str


# --- formatting ---------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%H:%M")


def setup_pages(app: web.Application) -> None:
    """Give ``app`` the page templates (its own key: other apps keep theirs)."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        app_key=TEMPLATES,
    )
    env.filters.update(bytes=human_bytes, duration=human_duration, utc=utc, clock=clock)


def _render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    response = aiohttp_jinja2.render_template(
        template, request, context, status=status, app_key=TEMPLATES
    )
    response.headers.update(page_headers(scripts=True))
    response.headers.update(NO_STORE)
    return response


def render_status(
    request: web.Request, view: StatusView, viewer: Viewer, *, refresh: float
) -> web.Response:
    return _render(
        request,
        "status.html",
        {"view": view, "viewer": viewer, "refresh": refresh, "now": time.time()},
    )


def render_live(request: web.Request, view: StatusView) -> web.Response:
    """The part of the page that changes, for the script to swap in."""
    return _render(request, "_live.html", {"view": view, "now": time.time()})


def render_signin(
    request: web.Request,
    *,
    csrf: str,
    message: str | None = None,
    status: int = 200,
    admin_key: str | None = None,
) -> web.Response:
    """``admin_key``: the file of the admin key the node's setup made, to name."""
    context = {"csrf": csrf, "message": message, "admin_key": admin_key}
    return _render(request, "signin.html", context, status=status)


async def static_file(request: web.Request) -> web.FileResponse:
    name = STATIC_FILES[request.path]
    return web.FileResponse(HERE / "static" / name, headers=page_headers(scripts=True))


# --- a model pull, streamed to the page ------------------------------------------


class PullState(Protocol):
    """A pull so far (models.progress.PullProgress has this shape)."""

    @property
    def status(self) -> str: ...
    @property
    def completed_bytes(self) -> int: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def done(self) -> bool: ...


class PullError(Exception):
    """A pull that cannot start or broke off; the message is for the operator.

    ``status``: the HTTP status when the pull fails before its first line.
    """

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


def pull_update(state: PullState) -> dict[str, Any]:
    """One line of the stream the page reads: the numbers and the words for them."""
    total, completed = state.total_bytes, state.completed_bytes
    percent = 100.0 if state.done else (100.0 * completed / total if total else 0.0)
    text = state.status
    if total and not state.done and completed < total:  # a layer on its way
        text += f": {human_bytes(completed)} of {human_bytes(total)} ({percent:.0f}%)"
    return {
        "status": state.status,
        "completed": completed,
        "total": total,
        "percent": round(percent, 1),
        "done": state.done,
        "text": text,
    }


async def stream_pull(
    request: web.Request, states: AsyncGenerator[PullState, None]
) -> web.StreamResponse:
    """Stream a pull's progress as NDJSON lines, each as it comes.

    A pull that fails before its first line is an error status with
    ``{"error": {"message": ...}}``; a failure after that goes in-band as
    ``{"error": "..."}``. Either way the page shows the message. When the
    browser leaves, aiohttp cancels this handler, which closes ``states``
    and with it the upstream's pull.
    """
    async with contextlib.aclosing(states):  # closed at once, also when cancelled
        try:
            first = await anext(states)
        except PullError as exc:
            error = {"message": str(exc), "type": "pull_failed", "param": None, "code": None}
            return web.json_response(
                {"error": error},
                status=exc.status,
                headers={**NO_STORE, **page_headers(scripts=True)},
            )
        except StopAsyncIteration:
            first = None
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson",
                "X-Accel-Buffering": "no",
                **NO_STORE,
                **page_headers(scripts=True),
            }
        )
        await response.prepare(request)

        async def send(line: dict[str, Any]) -> None:
            await response.write(json.dumps(line).encode() + b"\n")

        try:
            if first is not None:
                await send(pull_update(first))
            async for state in states:
                await send(pull_update(state))
        except PullError as exc:
            await send({"error": str(exc)})
        await response.write_eof()
        return response
