"""The usage stage, between the body and admission: may this user start a request,
and what did each request use.

Before admission on purpose: a user over budget is refused (429 with OpenAI's
codes and rate-limit headers) without ever taking a place in the queue. For
every inference request that gets this far the stage then

* checks the user's quota (usage/: the tier the shares stage found, the ledger
  reserving the request's estimated tokens until it ends, so concurrent
  requests cannot overshoot together);
* puts OpenAI's ``x-ratelimit-*`` headers on whatever response the request
  gets, success or refusal, streamed (with the headers, heartbeat headers
  included) or not;
* asks a streamed OpenAI upstream for its usage figures
  (``stream_options.include_usage``, spliced into the body) and hands the
  relay a :class:`Meter`, whose token counter reads the relayed bytes (and
  takes the extra usage chunk out again when the client did not ask for it);
* writes exactly one record when the request ends, however it ends: in the
  ``finally`` of its handler, cancellation included. A client's retry is a
  new request and a new record.

The store (SQLite in the data directory, or PostgreSQL shared by nodes),
its batch writer and the quota ledger are the node's: opened before the app
serves and drained (for up to ``close_grace`` seconds) after it stopped, by
the node's lifecycle (node/lifecycle.py); a worker's app opens the store for
reading only. ``GET /admin/usage`` reads it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ...auth.principal import Access
from ...usage.backends import open_store
from ...usage.counter import TokenCounter, Tokens, body_kind
from ...usage.ledger import QuotaLedger, Reservation, UsageLedger
from ...usage.options import QuotaOptions, StoreOptions
from ...usage.quota import limits_for
from ...usage.record import Outcome, UsageRecord
from ...usage.request_body import ask_for_usage, completion_limit, estimate_prompt_tokens
from ...usage.store import Grouping, UsageStore
from ...usage.when import iso_utc, parse_when
from ...usage.writer import BatchWriter
from ..core.errors import GatewayError
from ..core.keys import FORWARDED, PRINCIPAL, REQUEST_ID, SHARE
from ..telemetry.metrics import Metrics
from ..upstreams.upstream import without_password
from .context import mint_id
from .routes import RouteSpec, add_route, spec_for
from .validation import REQUEST_BODY

log = logging.getLogger("fognode.usage")


@dataclass(frozen=True)
class UsageOptions:
    store: StoreOptions
    quota: QuotaOptions
    metrics_per_user: bool = False  # a uid label on the token counters
    close_grace: float = 10.0  # seconds to write what is left at shutdown


class UsageStoreUnavailable(RuntimeError):
    """The store could not be opened at start (the message names it, without a password)."""


class Meter:
    """One metered request, as the proxy and the relay see it.

    The proxy says which upstream it sends to (:meth:`sending`); the relay
    asks for a token counter once it knows what kind of body a successful
    answer has (:meth:`count`), feeds it what it relays, and sets
    ``completed`` when the whole answer reached the client, or
    ``model_not_found`` when the upstream said the model is missing. The
    stage turns that into the record.
    """

    __slots__ = (
        "completed",
        "counter",
        "model_not_found",
        "prompt_estimate",
        "served_by",
        "strip_usage_chunk",
        "upstream",
    )

    def __init__(self, *, strip_usage_chunk: bool, prompt_estimate: int) -> None:
        self.strip_usage_chunk = strip_usage_chunk
        self.prompt_estimate = prompt_estimate
        self.upstream: str | None = None
        self.served_by: str | None = None  # a member of the fog's node id; None: this node
        self.counter: TokenCounter | None = None
        self.completed = False
        self.model_not_found = False

    def unfinished(self) -> Outcome:
        """How a request that did not complete ended, the client still there."""
        if self.model_not_found:
            return Outcome.MODEL_NOT_FOUND  # no failure of the upstream's (nor counted as one)
        return Outcome.UPSTREAM_FAILED if self.upstream else Outcome.REJECTED

    def sending(self, upstream: str, served_by: str | None = None) -> None:
        self.upstream, self.served_by = upstream, served_by

    def count(self, content_type: str) -> TokenCounter:
        self.counter = TokenCounter(
            body_kind(content_type),
            strip_usage_chunk=self.strip_usage_chunk,
            prompt_estimate=self.prompt_estimate,
        )
        return self.counter

    def tokens(self, outcome: Outcome) -> Tokens:
        """What the request used: the upstream's figures for a complete answer,
        what was delivered for one cut short, nothing for one never answered."""
        if self.counter is not None:
            return self.counter.tokens(completed=outcome is Outcome.COMPLETED)
        if outcome is Outcome.CLIENT_DISCONNECTED and self.upstream is not None:
            # Gone while the upstream read the prompt: it did read it.
            return Tokens(self.prompt_estimate, 0, partial=True, exact=False)
        return Tokens(0, 0, partial=False, exact=False)


class UsageAccounting:
    """The usage stage: the node's ledger it asks, the store its reports
    read, the counters it keeps; its methods are the stage's steps, in the
    order a request meets them."""

    def __init__(
        self, options: UsageOptions, metrics: Metrics, *, node_id: str, ledger: QuotaLedger
    ) -> None:
        self.options = options
        self.node_id = node_id  # tags the records
        self.ledger = ledger
        # Where this process holds the node's ledger, its writer and store;
        # a worker opens the store for reading (reports) while its app runs.
        self.writer: BatchWriter | None = None
        self.store: UsageStore | None = None
        if isinstance(ledger, UsageLedger):
            self.writer, self.store = ledger.writer, ledger.writer.store
        per_user = options.metrics_per_user
        labels = ["model", "uid"] if per_user else ["model"]
        by = "by model and user" if per_user else "by model"
        self.prompt_tokens, self.completion_tokens = (
            Counter(f"fognode_{kind}_tokens", f"{what}, {by}.", labels, registry=metrics.registry)
            for kind, what in (
                ("prompt", "Prompt tokens of inference requests"),
                ("completion", "Completion tokens delivered"),
            )
        )
        self.outcomes = Counter(
            "fognode_usage_records",
            "Inference requests recorded, by outcome.",
            ["outcome"],
            registry=metrics.registry,
        )
        self.quota_refusals = Counter(
            "fognode_quota_rejections",
            "Requests refused by a quota, by error code.",
            ["code"],
            registry=metrics.registry,
        )
        self._outcome_children: dict[Outcome, Counter] = {}
        self._token_children: dict[tuple[str, ...], tuple[Counter, Counter]] = {}

    async def reading_store(self, app: web.Application) -> AsyncIterator[None]:
        """A worker's store, open while its app runs: its reports read it; the
        supervisor checks quotas and writes the records."""
        store = await open_usage_store(self.options.store)
        self.store = store
        yield
        self.store = None
        await store.close()

    @web.middleware
    async def stage(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = spec_for(request)
        if spec is None or not spec.limited or FORWARDED in request:
            # (A member's request is recorded by the node it entered, once.)
            return await handler(request)
        principal = request.get(PRINCIPAL)
        uid = principal.uid if principal is not None else "anonymous"
        parsed = request[REQUEST_BODY].parsed or {}
        prompt_estimate = estimate_prompt_tokens(parsed)
        share = request.get(SHARE)
        tier = share.tier if share is not None else None
        reservation = await self._admit(request, spec, uid, tier, prompt_estimate)
        meter = request[METER] = Meter(
            strip_usage_chunk=self._ask_for_usage(request), prompt_estimate=prompt_estimate
        )
        outcome = Outcome.CLIENT_DISCONNECTED
        try:
            response = await handler(request)
        except (asyncio.CancelledError, ConnectionResetError):
            raise  # the client left (outcome as set above)
        except BaseException as exc:
            if isinstance(exc, GatewayError) and exc.code == "model_not_found":
                meter.model_not_found = True  # the node knew without asking (proxy.py)
            outcome = meter.unfinished()
            raise
        else:
            # Complete, or an upstream error answer, or an in-band error.
            outcome = Outcome.COMPLETED if meter.completed else meter.unfinished()
            return response
        finally:
            self._settle(request, spec, uid, reservation, meter, outcome)

    async def _admit(
        self,
        request: web.Request,
        spec: RouteSpec,
        uid: str,
        tier: str | None,
        prompt_estimate: int,
    ) -> Reservation:
        """The ledger's decision on the request (``tier``: the caller's, as the
        shares stage found it): its reservation, or the refusal raised
        (recorded first)."""
        quota = self.options.quota
        limits = limits_for(quota, tier)
        parsed = request[REQUEST_BODY].parsed or {}
        estimate = prompt_estimate + completion_limit(parsed, quota.default_completion_tokens)
        try:
            reservation = await self.ledger.admit(uid, limits, estimate=estimate)
        except Exception as exc:  # the store did not answer: no budget can be checked
            log.warning("quota check failed: %s: %s", type(exc).__name__, exc)
            self._settle(
                request, spec, uid, None, Meter(strip_usage_chunk=False, prompt_estimate=0)
            )
            raise GatewayError(
                503,
                "The usage store does not answer, so quotas cannot be checked; retry later.",
                code="usage_store_unavailable",
                headers={"Retry-After": "5"},
            ) from None
        decision = reservation.decision
        if decision.headers:
            request[RATE_LIMIT_HEADERS] = decision.headers
        if not decision.allowed:
            self.quota_refusals.labels(decision.code or "").inc()
            self._settle(
                request, spec, uid, reservation, Meter(strip_usage_chunk=False, prompt_estimate=0)
            )
            raise GatewayError(
                decision.status,
                decision.message or "Quota exceeded.",
                type=decision.type,
                code=decision.code,
                headers=dict(decision.headers),
            )
        return reservation

    @staticmethod
    def _ask_for_usage(request: web.Request) -> bool:
        """A streamed answer's usage figures, asked of the upstream for the
        client (``stream_options.include_usage``): True when the body was
        edited, so the relay takes the extra chunk out again."""
        body = request[REQUEST_BODY]
        if not body.streams_sse or not isinstance(body.data, bytes):
            return False
        asked = ask_for_usage(body.data, body.parsed or {})
        if asked.added:
            request[REQUEST_BODY] = dataclasses.replace(body, data=asked.body)
        return asked.added

    def _settle(
        self,
        request: web.Request,
        spec: RouteSpec,
        uid: str,
        reservation: Reservation | None,
        meter: Meter,
        outcome: Outcome = Outcome.REJECTED,
    ) -> None:
        """The request's one record; no await, so a cancelled handler gets here too."""
        tokens = meter.tokens(outcome)
        body = request.get(REQUEST_BODY)
        record = UsageRecord(
            uid=uid,
            model=(body.model if body is not None else None) or "",
            upstream=meter.upstream or "",
            route=spec.path,
            started_at=reservation.started_at if reservation is not None else time.time(),
            ended_at=time.time(),
            prompt_tokens=tokens.prompt_tokens,
            completion_tokens=tokens.completion_tokens,
            outcome=outcome,
            partial=tokens.partial,
            request_id=request[REQUEST_ID],
            node_id=self.node_id,
            record_id=mint_id(),
            served_by=meter.served_by or (self.node_id if meter.upstream else ""),
        )
        if reservation is not None and reservation.decision.allowed:
            self.ledger.settle(reservation, record)  # its reservation becomes the record
        else:
            self.ledger.record(record)
        self.observe(record)

    def observe(self, record: UsageRecord) -> None:
        # The children are kept per label values: ``labels()`` checks and locks
        # on every call, three times a request.
        outcome = self._outcome_children.get(record.outcome)
        if outcome is None:
            outcome = self._outcome_children[record.outcome] = self.outcomes.labels(
                record.outcome.value
            )
        outcome.inc()
        # Only models that produced tokens get a series: a made-up model name
        # is refused (0 tokens) and adds none.
        if not (record.prompt_tokens or record.completion_tokens):
            return
        labels = (record.model, record.uid) if self.options.metrics_per_user else (record.model,)
        tokens = self._token_children.get(labels)
        if tokens is None:
            tokens = self._token_children[labels] = (
                self.prompt_tokens.labels(*labels),
                self.completion_tokens.labels(*labels),
            )
        if record.prompt_tokens:
            tokens[0].inc(record.prompt_tokens)
        if record.completion_tokens:
            tokens[1].inc(record.completion_tokens)

    async def rate_limit_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        headers = request.get(RATE_LIMIT_HEADERS)
        if headers:
            response.headers.update(headers)

    async def report(self, request: web.Request) -> web.Response:
        """``GET /admin/usage``."""
        return web.json_response(await _report(self, request, self.options.quota))


class WriterCollector(Collector):
    """The batch writer's counters, where it runs (a worker process has none:
    its supervisor writes the node's records and reports them)."""

    def __init__(self, writer: Callable[[], BatchWriter | None]) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        writer = self.writer()
        if writer is None:
            return
        yield GaugeMetricFamily(
            "fognode_usage_records_pending",
            "Usage records not yet in the store.",
            value=len(writer.pending()),
        )
        yield CounterMetricFamily(
            "fognode_usage_records_written", "Usage records written.", value=writer.written
        )
        yield CounterMetricFamily(
            "fognode_usage_records_dropped",
            "Usage records dropped because the store was behind or unreachable.",
            value=writer.dropped,
        )
        yield CounterMetricFamily(
            "fognode_usage_store_write_failures",
            "Failed batch writes (retried).",
            value=writer.failures,
        )


USAGE = web.AppKey("fognode.usage", UsageAccounting)
# The metered request's counter, read by the proxy and the relay.
METER = web.RequestKey("fognode.meter", Meter)
# The x-ratelimit-* headers for the response, whatever it turns out to be.
RATE_LIMIT_HEADERS = web.RequestKey("fognode.rate_limit_headers", Mapping[str, str])


def setup_quotas(
    app: web.Application,
    options: UsageOptions,
    metrics: Metrics,
    *,
    node_id: str,
    ledger: QuotaLedger,
) -> UsageAccounting:
    """Install the usage stage and ``GET /admin/usage``. ``node_id`` names this
    node in the records; ``ledger``: the node's, where quotas are checked and
    records written (a worker's asks its supervisor, so reservations and
    unwritten records are the node's, never a worker's). The state it returns
    is what the status page reads usage from."""
    accounting = app[USAGE] = UsageAccounting(options, metrics, node_id=node_id, ledger=ledger)
    if accounting.store is None:
        app.cleanup_ctx.append(accounting.reading_store)
    app.middlewares.append(accounting.stage)
    if options.quota.enabled:  # without limits no decision carries headers
        app.on_response_prepare.append(accounting.rate_limit_headers)
    add_route(app, RouteSpec("GET", "/admin/usage", Access.ADMIN), accounting.report)
    return accounting


async def open_usage_store(options: StoreOptions) -> UsageStore:
    """The store, open and migrated to this fognode's schema (the supervisor of
    worker processes does this once before any worker starts), or
    UsageStoreUnavailable naming it."""
    store = open_store(options)
    try:
        await store.open()
    except Exception as exc:
        raise UsageStoreUnavailable(
            f"cannot open the usage store ({_where(options)}): {type(exc).__name__}: {exc}"
        ) from None
    return store


def _where(options: StoreOptions) -> str:
    if options.database_url is not None:
        return f"PostgreSQL at {without_password(options.database_url)}"
    return f"SQLite file {options.sqlite_path}"


async def _report(
    accounting: UsageAccounting, request: web.Request, quota: QuotaOptions
) -> dict[str, object]:
    store, ledger = accounting.store, accounting.ledger
    if store is None:
        raise GatewayError(503, "The usage store is not open.", code="usage_store_unavailable")
    now = time.time()
    day_start = quota.day_start
    times = {}
    for name, default in (("since", "today"), ("until", "now")):
        text = request.query.get(name, default)
        try:
            times[name] = parse_when(text, now=now, day_start=day_start)
        except ValueError as exc:
            raise GatewayError(400, str(exc), param=name, code="invalid_time") from None
    since, until = times["since"], times["until"]
    if until < since:
        raise GatewayError(400, "until is before since.", param="until", code="invalid_time")
    uid = request.query.get("user") or None
    users = await store.totals(since=since, until=until, by=Grouping.USER, uid=uid)
    models = await store.totals(since=since, until=until, by=Grouping.MODEL, uid=uid)
    return {
        "since": iso_utc(since),
        "until": iso_utc(until),
        **({"user": uid} if uid else {}),
        "users": [t.as_json() for t in users],
        "models": [t.as_json() for t in models],
        # Recorded but not yet written (at most usage_flush_seconds old): not in the sums.
        "pending_records": await ledger.pending_records(),
    }
