"""The status page's stage: what the node knows about itself, for web/status.

Beside the pipeline, like the probes: it registers the operator's page
routes through the route table (``page=True``, administrators only; the
access stage admits a signed-in browser's session for them, sessions.py),
and answers them from state the other stages own: the upstream pool (health,
models, and which are loaded), admission (slots, queue), the live counters,
the request-context stage's activity (requests and errors per minute, the
latest errors), the certificate the TLS terminator serves, and usage
accounting's store when it runs.

What it shows is the node's, also with worker processes: slots and the
queue come from the node's admission; the activity (minutes, latest
errors, live counts) from :class:`ActivitySource`, which in a worker asks
the supervisor to sum every worker's.

A model pull from the page goes to the upstream an API pull of that model
would go to (the pool's choice), as Ollama's own ``/api/pull`` stream, which
models/progress folds into bytes and a percentage, streamed to the page as
they come (web/status.stream_pull). Closing the page closes the pull.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence, Sized
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from ... import safejson
from ...auth.principal import Access
from ...certs.export import export_forms
from ...certs.issuer import cert_names
from ...fog.members import Standing
from ...models.progress import PullProgress
from ...usage.ledger import BudgetWarning
from ...usage.quota import day_bounds
from ...usage.store import Grouping, UsageStore
from ...web.status import (
    STATIC_FILES,
    BudgetView,
    CertView,
    ClassView,
    FogView,
    LoadView,
    MemberView,
    ModelView,
    NodeView,
    PullError,
    StatusView,
    UpstreamView,
    UsageView,
    Viewer,
    render_live,
    render_status,
    setup_pages,
    static_file,
    stream_pull,
)
from .. import __version__
from ..core.drain import Drain
from ..core.errors import GatewayError
from ..core.keys import PRINCIPAL, REQUEST_ID
from ..pipeline.admission import AdmissionControl
from ..pipeline.routes import RouteSpec, add_route
from ..telemetry.activity import Activity, ActivityView
from ..telemetry.stats import GatewayStats
from ..transport.tls import TlsTerminator
from ..upstreams.peers import FogPeers
from ..upstreams.pool import UpstreamPool
from ..upstreams.upstream import Upstream, UpstreamBroken, UpstreamResponse
from .sessions import SESSION, SIGN_IN, SIGN_OUT, BrowserSessions, read_form

log = logging.getLogger("fognode.status")

# Ollama's model names: [host/][namespace/]model[:tag], e.g. hf.co/org/model:Q4_K_M.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,254}")
USAGE_TIMEOUT = 3.0  # seconds the page waits for the usage store
# Longest status line of a pull taken from Ollama (its lines are under 300 bytes).
MAX_STATUS_LINE = 64 * 1024


@dataclass(frozen=True)
class StatusOptions:
    node_name: str
    node_id: str
    refresh: float  # seconds between an open page's refreshes
    pull_idle_timeout: float  # longest silence between a pull's status lines


@dataclass
class Listening:
    """What is known once the server listens (server.py fills it in)."""

    url: str  # where it listens, in words
    onboarding_url: str | None = None
    connections: Sized | None = None  # the connection guard


LISTENING = web.AppKey("fognode.listening", Listening)


class ActivitySource:
    """What the page shows of the node's activity.

    In one process, this process's (:meth:`here`). In a worker, ``node_view``
    is set (worker.py): it asks the supervisor, which gathers every worker's
    :meth:`here` and sums them (activity.merged), as /metrics does.
    """

    def __init__(
        self, activity: Activity, stats: GatewayStats, listening: Listening, pool: UpstreamPool
    ) -> None:
        self.activity = activity
        self.stats = stats
        self.listening = listening
        self.pool = pool
        self.node_view: Callable[[], Awaitable[ActivityView]] | None = None

    def here(self) -> ActivityView:
        conns = self.listening.connections
        return ActivityView(
            minutes=self.activity.per_minute(),
            errors=self.activity.latest_errors(),
            active_streams=self.stats.active_streams,
            in_flight=self.stats.active_requests,
            connections=len(conns) if conns is not None else None,
            upstreams=[m.active for m in self.pool.members],
            fog={
                name: [self.stats.fog_handed.get(name, 0), self.stats.fog_received.get(name, 0)]
                for name in {*self.stats.fog_handed, *self.stats.fog_received}
            },
        )

    async def view(self) -> ActivityView:
        return await self.node_view() if self.node_view is not None else self.here()


ACTIVITY = web.AppKey("fognode.activity", ActivitySource)

# Usage per user since some time: (since, rows). Given by the gateway when usage
# accounting runs (see usage_report); the page says so when there is none.
UsageReport = Callable[[], Awaitable[tuple[float, Sequence[UsageView]]]]
# Who is near a budget now (the node's quota ledger's warnings).
BudgetWarnings = Callable[[], Awaitable[tuple[BudgetWarning, ...]]]


def usage_report(
    store: Callable[[], UsageStore | None], *, day_start: dt.timedelta = dt.timedelta(0)
) -> UsageReport:
    """Per-user usage of the current quota day, from the usage store (``store()``
    is the open store, or None while it is not open)."""

    async def report() -> tuple[float, Sequence[UsageView]]:
        opened = store()
        if opened is None:
            raise RuntimeError("the usage store is not open")
        now = time.time()
        since, _ = day_bounds(now, day_start)
        totals = await opened.totals(since=since, until=now, by=Grouping.USER)
        rows = [
            UsageView(t.uid or "?", t.requests, t.rejected, t.prompt_tokens, t.completion_tokens)
            for t in totals
        ]
        return since, rows

    return report


def _fog_view(fog: FogPeers, counts: dict[str, list[int]]) -> FogView:
    """Every candidate the membership service knows, with the node's counts of
    requests handed to it and received from it."""
    rows = []
    for c in fog.candidates:
        if c.standing is Standing.SELF:
            continue
        state = c.state
        handed, received = counts.get(c.identity, [0, 0]) if c.identity else [0, 0]
        rows.append(
            MemberView(
                name=c.identity or (state.name if state is not None else ""),
                address=c.address,
                standing=c.standing.value,
                models=state.models if state is not None else (),
                loaded=state.loaded if state is not None else (),
                slots_used=state.active if state is not None else 0,
                capacity=state.capacity if state is not None else 0,
                queued=state.queued if state is not None else 0,
                draining=state.draining if state is not None else False,
                handed=handed,
                received=received,
                heard=c.age,
                error=c.last_error,
            )
        )
    return FogView(fog.tls.name, rows)


def _models(pool: UpstreamPool, member: Upstream) -> list[ModelView]:
    now = time.time()
    return [ModelView(n, pool.is_loaded(member, n, now)) for n in sorted(member.models)]


def _cert_view(tls: TlsTerminator | None) -> CertView | None:
    if tls is None or tls.pair is None:
        return None
    leaf, ca = tls.pair.leaf, export_forms(tls.pair.ca)
    names = cert_names(leaf)
    return CertView(
        names=[*names.dns, *(str(ip) for ip in names.ips)],
        not_after=leaf.not_valid_after_utc,
        ca_name=ca.name,
        ca_fingerprint=ca.fingerprint,
    )


class StatusPage:
    """The page's routes, answered from state the other stages own."""

    def __init__(
        self,
        options: StatusOptions,
        *,
        sessions: BrowserSessions,
        pool: UpstreamPool,
        admission: AdmissionControl[Any],
        stats: GatewayStats,
        source: ActivitySource,
        listening: Listening,
        tls: TlsTerminator | None,
        usage: UsageReport | None,
        drain: Drain | None,
        fog: FogPeers | None,
        budgets: BudgetWarnings | None = None,
    ) -> None:
        self.options = options
        self.budgets = budgets
        self.sessions = sessions
        self.pool = pool
        self.admission = admission
        self.stats = stats
        self.source = source
        self.listening = listening
        self.tls = tls
        self.usage = usage
        self.drain = drain
        self.fog = fog
        self.started = time.time()

    async def page(self, request: web.Request) -> web.StreamResponse:
        refresh = self.options.refresh
        return render_status(request, await self.snapshot(), self.viewer(request), refresh=refresh)

    async def live(self, request: web.Request) -> web.StreamResponse:
        return render_live(request, await self.snapshot())

    async def pull(self, request: web.Request) -> web.StreamResponse:
        form = await read_form(request, self.sessions.options.body_timeout)
        name = form.get("model", "").strip()
        if not MODEL_NAME.fullmatch(name) or ".." in name:
            raise GatewayError(
                400,
                "Name a model as Ollama does: letters, digits and . _ : / - "
                "(such as llama3.2:1b or hf.co/org/model:Q4_K_M).",
                param="model",
                code="invalid_model_name",
            )
        log.info("pull of %s started from the status page by %s", name, request[PRINCIPAL].uid)
        pulled = pull_model(
            self.pool, self.stats, name, request[REQUEST_ID], self.options.pull_idle_timeout
        )
        return await stream_pull(request, pulled)

    async def snapshot(self) -> StatusView:
        since, rows, usage_error = await self._usage()
        # All three the node's (from the supervisor, in a worker).
        load = await self.admission.load()
        near = await self._budgets()
        now = await self.source.view()
        pool = self.pool
        engine = pool.local_state() if pool.local_state is not None else None
        upstreams = [
            UpstreamView(
                m.base,
                m.kind,
                m.healthy,
                m.last_error,
                active,
                _models(pool, m),
                engine_state=engine["state"] if engine is not None and m.local else None,
                slots=engine["slots"] if engine is not None and m.local else m.slots,
            )
            for m, active in zip(pool.members, now.upstreams, strict=True)
        ]
        return StatusView(
            node=NodeView(
                name=self.options.node_name,
                node_id=self.options.node_id,
                version=__version__,
                started=self.started,
                listening=self.listening.url,
                onboarding_url=self.listening.onboarding_url,
                tls=_cert_view(self.tls),
            ),
            load=LoadView(
                active_streams=now.active_streams,
                in_flight=now.in_flight,
                queued=load.queued,
                slots_used=load.active,
                capacity=self.admission.capacity,
                connections=now.connections,
                classes=[
                    ClassView(c.name, c.queued, c.longest, [(w.uid, w.requests) for w in c.users])
                    for c in load.classes
                ],
            ),
            upstreams=upstreams,
            minutes=now.minutes,
            errors=now.errors,
            usage=rows,
            usage_since=since,
            usage_error=usage_error,
            draining=self.drain is not None and self.drain.draining,
            fog=_fog_view(self.fog, now.fog) if self.fog is not None else None,
            budgets=near,
            no_pulls=no_pulls(self.pool.kind),
        )

    async def _budgets(self) -> list[BudgetView]:
        if self.budgets is None:
            return []
        try:
            async with asyncio.timeout(USAGE_TIMEOUT):
                found = await self.budgets()
        except Exception as exc:  # the page still shows everything else
            log.warning("budget warnings for the status page: %s", exc)
            return []
        return [BudgetView(w.uid, w.budget, w.used, w.limit, w.resets) for w in found]

    async def _usage(self) -> tuple[float | None, Sequence[UsageView] | None, str | None]:
        if self.usage is None:
            return None, None, None
        try:
            async with asyncio.timeout(USAGE_TIMEOUT):
                since, rows = await self.usage()
        except Exception as exc:  # the page still shows everything else
            log.warning("usage for the status page: %s", exc)
            return None, None, f"The usage store did not answer ({type(exc).__name__})."
        return since, rows, None

    def viewer(self, request: web.Request) -> Viewer:
        session = request.get(SESSION)
        principal = request[PRINCIPAL]
        csrf = self.sessions.signer.csrf_token(session) if session is not None else ""
        return Viewer(principal.uid, csrf)


def setup_status(
    app: web.Application,
    options: StatusOptions,
    *,
    sessions: BrowserSessions,
    pool: UpstreamPool,
    admission: AdmissionControl[Any],
    stats: GatewayStats,
    activity: Activity,
    listening: Listening,
    tls: TlsTerminator | None = None,
    usage: UsageReport | None = None,
    drain: Drain | None = None,
    fog: FogPeers | None = None,
    budgets: BudgetWarnings | None = None,
) -> None:
    """``drain`` and ``fog``: the node's drain flag, and its view of its fog's
    members when it is one (the Fog card); ``budgets``: who is near a budget,
    where usage accounting runs."""
    app[LISTENING] = listening
    source = app[ACTIVITY] = ActivitySource(activity, stats, listening, pool)
    status = StatusPage(
        options,
        sessions=sessions,
        pool=pool,
        admission=admission,
        stats=stats,
        source=source,
        listening=listening,
        tls=tls,
        usage=usage,
        drain=drain,
        fog=fog,
        budgets=budgets,
    )
    setup_pages(app)
    for path in STATIC_FILES:
        activity.not_counted(path)
        add_route(app, RouteSpec("GET", path, Access.PUBLIC, page=True), static_file)
    for method, path, handler in (
        ("GET", "/", status.page),
        ("GET", "/status/live", status.live),
        ("POST", "/status/pull", status.pull),
    ):
        activity.not_counted(path)
        add_route(app, RouteSpec(method, path, Access.ADMIN, page=True), handler)
    for path in (SIGN_IN, SIGN_OUT):
        activity.not_counted(path)


def no_pulls(kind: str) -> str | None:
    """Why a node with this kind of upstream pulls no models (None: Ollama does)."""
    if kind == "ollama":
        return None
    if kind == "embedded":
        return (
            "This node answers with its embedded model (llama.cpp): no Ollama answered when it "
            "started. Its model is the embedded one; pulling models needs Ollama: run it on "
            "this machine and restart fognode, or name one with FOGNODE_UPSTREAM_URL."
        )
    return (
        "This node's upstream is an OpenAI-compatible server, which has no model pulls: "
        "manage its models where it runs."
    )


async def pull_model(
    pool: UpstreamPool, stats: GatewayStats, name: str, request_id: str, idle_timeout: float
) -> AsyncGenerator[PullProgress, None]:
    """Ollama's pull of ``name``, one progress state per status line."""
    refused = no_pulls(pool.kind)
    if refused is not None:
        raise PullError(refused, 409)
    choices = [c for c in pool.route(name).choices if c.ready]
    if not choices:
        raise PullError("Every upstream is at its request limit; try again shortly.", 503)
    member = choices[0].member
    headers = CIMultiDict({"Content-Type": "application/json", "X-Request-ID": request_id})
    body = json.dumps({"model": name, "stream": True}).encode()
    progress = PullProgress()
    stats.active_requests += 1
    member.active += 1
    try:
        try:
            resp = await member.open("POST", "/api/pull", headers=headers, data=body)
        except GatewayError as exc:
            raise PullError(exc.message, exc.status) from None
        try:
            async for line in _status_lines(resp, member.base, idle_timeout):
                if "error" in line:
                    raise PullError(f"Pulling {name} failed: {line['error']}")
                progress.update(line)
                yield progress
        finally:
            resp.close()  # an unfinished pull stops when its connection closes
    finally:
        stats.active_requests -= 1
        member.active -= 1
    if not progress.done:
        raise PullError(f"Ollama at {member.base} ended the pull before it reported success.")
    log.info("pulled %s on %s", name, member.base)
    await pool.refresh()  # the node's model list changed


async def _status_lines(
    resp: UpstreamResponse, upstream: str, idle_timeout: float
) -> AsyncGenerator[dict[str, object], None]:
    """Ollama's NDJSON status lines, each as it arrives."""
    if resp.status >= 400:
        text = (await resp.read(4096)).decode(errors="replace")
        raise PullError(f"Ollama at {upstream} answered {resp.status}: {text}")
    pending = b""
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                chunk = await resp.readany()
        except TimeoutError:
            raise PullError(f"Ollama at {upstream} was silent for {idle_timeout:g}s.") from None
        except UpstreamBroken:
            raise PullError(f"Ollama at {upstream} broke off the pull.") from None
        *lines, pending = (pending + chunk).split(b"\n")
        if not chunk:
            lines.append(pending)
        elif len(pending) > MAX_STATUS_LINE:
            raise PullError(f"Ollama at {upstream} sent a status line that is not JSON.")
        for raw in lines:
            try:
                line = safejson.loads(raw) if raw.strip() else None
            except ValueError:
                raise PullError(
                    f"Ollama at {upstream} sent a status line that is not JSON."
                ) from None
            if isinstance(line, dict):
                yield line
        if not chunk:
            return
