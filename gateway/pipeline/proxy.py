"""The proxy stage: forward the request to an upstream, and relay its answer back.

By the time a request gets here it is authorised (access.py), its body is
read and checked (validation.py) and, for inference, it holds an admission
slot (admission.py). The proxy takes from the pool the upstream that can
start the request soonest (routing/: loaded with a slot free first, the
conversation's last upstream when that costs no wait), waiting there for a
slot when it is at its cap; sends the client's bytes with only the
documented edits (compat.py); fails over to the next upstream only before
the client has had a byte (not reached, closed before answering, or a 503
busy answer, which is load and not absence); tells the pool how each
upstream fared (its breaker and pace); and hands the answer to the relay
(answers.py checks plain JSON answers first, relay.py streams the rest).
A request that placement handed to a member of the fog goes there instead. With several upstreams it
says which one answered and why: ``X-Fognode-Upstream`` (its position in
the configuration: the client learns nothing of the node's network) and
``X-Fognode-Upstream-Reason`` on the response, the upstream's URL and the
reasons in the access log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import Counter

from ...fog.hop import Forwarded
from ...fog.members import Member
from ...routing.conversation import Conversation, conversation_of
from ...routing.order import FAILOVER, WAITED
from ..core.errors import GatewayError
from ..core.keys import PRINCIPAL, REQUEST_ID, ROUTED, SHARE, Routed
from ..telemetry.metrics import Metrics
from ..telemetry.stats import GatewayStats
from ..upstreams.peers import FogPeers
from ..upstreams.pool import UPSTREAM, Choice, Route, UpstreamPool
from ..upstreams.upstream import (
    Upstream,
    UpstreamGone,
    UpstreamNotReached,
    filter_request_headers,
    not_ready_error,
)
from .admission import KEEPALIVE
from .answers import relay_answer
from .compat import RouteEdits, fill_model, fill_model_list, model_not_found_message
from .keepalive import KeepAlive
from .placement import HANDOVER, Handover, MembersDeclined
from .quotas import METER, Meter
from .relay import RelayOptions
from .request_target import upstream_target
from .routes import PROXIED_ROUTES, Handler, Listing, RouteSpec, add_route
from .scopes import keep_in_scope, scope_of
from .validation import REQUEST_BODY, RequestBody

log = logging.getLogger("fognode.gateway")

# Which of several upstreams answered, and why (routing/order.py's words).
UPSTREAM_HEADER = "X-Fognode-Upstream"
REASON_HEADER = "X-Fognode-Upstream-Reason"


def setup_proxy(
    app: web.Application,
    pool: UpstreamPool,
    relay: RelayOptions,
    *,
    metrics: Metrics,
    stats: GatewayStats,
    routes: tuple[RouteSpec, ...] = PROXIED_ROUTES,
    fog: FogPeers | None = None,
) -> None:
    """Register the forwarded routes, through ``pool`` (started and closed by
    its owner: the node's lifecycle, or a worker); the connections to the
    fog's members live as long as the app."""
    app[UPSTREAM] = pool
    if fog is not None:
        members = fog

        async def connections(app: web.Application) -> AsyncIterator[None]:
            yield
            await members.close()

        app.cleanup_ctx.append(connections)
    if not pool.single or fog is not None:  # with one upstream there is no choice to tell
        app.on_response_prepare.append(_say_which_upstream)
    sender = _Sender(pool, relay, metrics, stats, fog)
    for spec in routes:
        add_route(app, spec, sender.handler_for(spec))


async def _say_which_upstream(request: web.Request, response: web.StreamResponse) -> None:
    """Say which upstream answered, unless the headers went out before it was
    chosen (a streamed request that waited got them early: the log has it)."""
    routed = request.get(ROUTED)
    if routed is not None:
        response.headers[UPSTREAM_HEADER] = routed.label
        response.headers[REASON_HEADER] = routed.reasons


class _Sender:
    """What every forwarded route shares: the pool, the relay's options, the counters."""

    def __init__(
        self,
        pool: UpstreamPool,
        relay: RelayOptions,
        metrics: Metrics,
        stats: GatewayStats,
        fog: FogPeers | None,
    ) -> None:
        self.pool, self.relay, self.metrics, self.stats = pool, relay, metrics, stats
        self.fog = fog
        self.handed = (
            Counter(
                "fognode_fog_forwarded",
                "Requests handed to a member of the fog, by the member's name and why "
                "(peer-loaded, peer-free, peer-has-model; with failover when one before it "
                "declined).",
                ["peer", "reason"],
                registry=metrics.registry,
            )
            if fog is not None
            else None
        )

    def handler_for(self, spec: RouteSpec) -> Handler:
        if spec.native and self.pool.kind != "ollama":
            return partial(native_api_unavailable, embedded=self.pool.kind == "embedded")
        # A list from several upstreams is their union; the OpenAI list always
        # gets the node's own field, which says where a model is loaded; a key
        # scoped to some models sees only those (scopes.py).
        if spec.listing is not None:
            key, id_field = spec.listing.value
            merge = not self.pool.single or spec.listing is Listing.OPENAI

            async def listing(request: web.Request) -> web.StreamResponse:
                models = scope_of(request)
                if not merge and models is None:
                    return await forward(request)  # one Ollama's own list, as it sends it
                if (waiting := self.pool.not_ready()) is not None:
                    raise not_ready_error(*waiting)
                merged = await self.pool.merged_listing(
                    upstream_target(request), key, id_field, _upstream_headers(request)
                )
                if spec.listing is Listing.OPENAI:
                    self.pool.mark_warmth(merged)
                    fill_model_list(merged)  # every entry a Model (compat.py)
                if models is not None:
                    keep_in_scope(merged, key, id_field, models)
                return web.json_response(merged)

        if spec.entry_of is not None and self.pool.kind != "ollama":
            key, id_field = spec.entry_of.value

            async def entry(request: web.Request) -> web.StreamResponse:
                model = request.match_info["model"]
                if (waiting := self.pool.not_ready()) is not None:
                    raise not_ready_error(*waiting)
                merged = await self.pool.merged_listing(
                    "/v1/models", key, id_field, _upstream_headers(request)
                )
                self.pool.mark_warmth(merged)
                entries = merged.get(key)
                for item in entries if isinstance(entries, list) else []:
                    if isinstance(item, dict) and item.get(id_field) == model:
                        fill_model(item)  # a Model, as OpenAI's clients decode it
                        return web.json_response(item)
                raise GatewayError(
                    404,
                    model_not_found_message(model),
                    type="not_found_error",
                    code="model_not_found",
                )

            return entry

        async def forward(request: web.Request) -> web.StreamResponse:
            body = request[REQUEST_BODY]
            data = body.data
            if spec.request_edit is not None and body.parsed is not None:
                assert isinstance(data, bytes)
                data = spec.request_edit(data, body.parsed, self.pool.kind)
            response = await self.send(
                request,
                data,
                body.model,
                spec.edits,
                request.get(KEEPALIVE),
                self._conversation(request, spec, body),
                request.get(METER),
            )
            if spec.changes_models and response.status < 400:
                await self.pool.refresh()  # the node's model list changed
            return response

        return listing if spec.listing is not None else forward

    def _conversation(
        self, request: web.Request, spec: RouteSpec, body: RequestBody
    ) -> Conversation | None:
        """A chat's keys for affinity (routing/conversation.py), per caller."""
        if self.pool.affinity is None or not (spec.conversation and body.parsed and body.model):
            return None
        principal = request.get(PRINCIPAL)
        caller = f"{principal.kind}:{principal.uid}" if principal else ""
        return conversation_of(caller, body.model, body.parsed.get("messages"))

    async def send(
        self,
        request: web.Request,
        data: object,
        model: str | None,
        edits: RouteEdits,
        keepalive: KeepAlive | None,
        conversation: Conversation | None = None,
        meter: Meter | None = None,
    ) -> web.StreamResponse:
        """Send to the best upstream; when it could not be reached, closed the
        connection before any answer, or answered busy (the client has had
        nothing yet), try the next one, each upstream once. The model check
        before the queue has answered a model nobody has (model_check.py)."""
        handover = request.get(HANDOVER)
        if handover is not None:
            assert isinstance(data, bytes)  # an inference route's body, read whole
            return await self._hand_over(request, handover, data, model, edits, keepalive, meter)
        pool = self.pool
        affine = await pool.recall(conversation) if conversation is not None else None
        route = Route([], model, conversation, affine)
        once = data is not None and not isinstance(data, bytes)  # a streamed body: one try
        headers = _upstream_headers(request)
        if meter is not None:
            # The counter reads the answer's bytes: uncompressed, please (the
            # upstream is local; compressing for the relay would only cost CPU).
            headers["Accept-Encoding"] = "identity"
        failed: GatewayError | None = None
        while True:
            if keepalive is not None:
                keepalive.status = self._queued(route)
            choice = await pool.take(route)
            if keepalive is not None:
                keepalive.status = None
            if choice is None:  # every upstream that could serve it failed
                assert failed is not None
                raise failed
            self._explain(request, choice, failover=failed is not None, waited=route.waited)
            try:
                response = await self._send_to(
                    request,
                    choice.member,
                    headers,
                    data,
                    model,
                    edits,
                    keepalive,
                    meter,
                    choice=choice,
                    elsewhere=lambda chosen: not once and pool.elsewhere(route, chosen),
                )
            except (UpstreamNotReached, UpstreamGone) as exc:
                if once:
                    raise
                route.tried.add(choice.position - 1)
                failed = exc
                continue
            if response is None:  # it answered busy, and another can take it
                route.tried.add(choice.position - 1)
                failed = GatewayError(503, "Every upstream is busy.", code="upstreams_busy")
                continue
            if response.status < 400:
                pool.served(route, choice)
            return response

    def _queued(self, route: Route) -> Callable[[], Awaitable[str | None]]:
        """A waiting stream's heartbeat says its place among the requests waiting here."""

        async def status() -> str | None:
            place = self.pool.place(route)
            return f"queued {place}" if place is not None else None

        return status

    async def _hand_over(
        self,
        request: web.Request,
        handover: Handover,
        data: bytes,
        model: str | None,
        edits: RouteEdits,
        keepalive: KeepAlive | None,
        meter: Meter | None,
    ) -> web.StreamResponse:
        """To the members placement chose, in order, with the entry node's
        assertion of the caller; the next one when one declines before its
        first byte; MembersDeclined (the request runs here) when all did."""
        fog = self.fog
        assert fog is not None and self.handed is not None
        principal, share = request.get(PRINCIPAL), request.get(SHARE)
        hop = Forwarded(
            entry=fog.options.own_id,
            uid=principal.uid if principal else "anonymous",
            kind=principal.kind if principal else "anonymous",
            may_queue=handover.may_queue,
            priority=share.priority if share is not None else None,
        ).headers()
        headers = _upstream_headers(request)
        headers.update(hop)
        if meter is not None:
            headers["Accept-Encoding"] = "identity"
        for index, choice in enumerate(handover.choices):
            member = choice.member
            reasons = ",".join((*choice.reasons, FAILOVER) if index else choice.reasons)
            request[ROUTED] = Routed(member.address, 0, reasons, peer=member.identity)
            self.handed.labels(member.identity, reasons).inc()
            try:
                upstream = await fog.upstream(member)
                response = await self._send_to(
                    request, upstream, headers, data, model, edits, keepalive, meter, member
                )
            except MemberDeclined as exc:
                fog.failed(member, exc.why)
                continue
            assert response is not None  # only one of this node's upstreams answers None
            handed = self.stats.fog_handed
            handed[member.identity] = handed.get(member.identity, 0) + 1
            return response
        request.pop(ROUTED, None)
        raise MembersDeclined()

    def _explain(
        self, request: web.Request, choice: Choice, *, failover: bool, waited: bool
    ) -> None:
        """For the response headers, the access log and /metrics (with one upstream: nothing)."""
        if self.pool.single:
            return
        words = (
            *choice.reasons,
            *((WAITED,) if waited else ()),
            *((FAILOVER,) if failover else ()),
        )
        reasons = ",".join(words)
        request[ROUTED] = Routed(choice.member.base, choice.position, reasons)
        self.metrics.upstream_choices.labels(str(choice.position), reasons).inc()

    async def _send_to(
        self,
        request: web.Request,
        upstream: Upstream,
        headers: CIMultiDict[str],
        data: object,
        model: str | None,
        edits: RouteEdits,
        keepalive: KeepAlive | None,
        meter: Meter | None,
        member: Member | None = None,
        *,
        choice: Choice | None = None,
        elsewhere: Callable[[Choice], bool] | None = None,
    ) -> web.StreamResponse | None:
        """Send to one of this node's upstreams (``choice``, its slot taken in
        the pool, which hears how it fared) or to one member of the fog
        (``member``), and relay the answer. None when the upstream answered
        busy and ``elsewhere`` says another can take the request. A member
        that fails or declines before its first byte raises MemberDeclined:
        nothing was relayed, another may take it."""
        stats, pool = self.stats, self.pool
        stats.active_requests += 1
        if choice is None:
            upstream.active += 1
        try:
            started = time.perf_counter()
            if meter is not None:
                meter.sending(upstream.base, member.node if member is not None else None)
            try:
                answer = await upstream.open(
                    request.method, upstream_target(request), headers=headers.copy(), data=data
                )
            except GatewayError as exc:  # not reached, or no answer
                if member is not None:
                    raise MemberDeclined(exc.message) from None
                if isinstance(exc, UpstreamNotReached):
                    stats.upstream_up = False
                if choice is not None:
                    pool.failed(choice, exc)  # its breaker counts it
                raise
            elapsed = time.perf_counter() - started
            if member is not None:
                if answer.status in DECLINED:
                    answer.close()
                    raise MemberDeclined(f"it answered {answer.status}")
            else:
                stats.upstream_up = True
                body = request.get(REQUEST_BODY)
                if body is not None and body.model is not None and answer.status < 400:
                    stats.first_token_after(elapsed)
            if choice is not None:
                if answer.status == 503:  # "busy" (Ollama's queue, llama.cpp loading): load
                    pool.busy(choice, retry_after(answer.headers.get("Retry-After")))
                    self.metrics.upstream_busy.labels(str(choice.position)).inc()
                    if elsewhere is not None and elsewhere(choice):
                        answer.close()
                        return None
                else:
                    pool.answered(choice, elapsed)
            route = request.match_info.route.resource
            self.metrics.first_byte_after(route.canonical if route else "other", elapsed)
            if keepalive is not None:
                try:
                    await keepalive.settle()  # no heartbeat mid-write from here on
                except BaseException:
                    answer.close()
                    raise
            response = await relay_answer(
                request,
                answer,
                options=self.relay,
                edits=edits,
                upstream_name=upstream.base,
                model=model,
                keepalive=keepalive,
                stats=stats,
                meter=meter,
            )
            if choice is not None and answer.status < 400:
                pool.finished(choice)
            return response
        finally:
            stats.active_requests -= 1
            if choice is None:
                upstream.active -= 1
            else:
                pool.release(choice)


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After field in seconds (a date is not worth parsing here)."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class MemberDeclined(Exception):
    """A member of the fog failed or declined a request before its first byte."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


# A member's answers that another member (or this node) may do better with:
# it cannot take the request (busy, draining, its model list was stale, its
# upstream is down), or it refused this node (a certificate it no longer
# takes). A 400 would be the same everywhere: it is relayed.
DECLINED = frozenset({401, 403, 404, 408, 409, 429, 500, 501, 502, 503, 504})


def _upstream_headers(request: web.Request) -> CIMultiDict[str]:
    """The client's headers as the upstream gets them: hop-by-hop fields and
    the client's credentials dropped, where the request came from added."""
    headers = filter_request_headers(request.headers)
    headers["X-Request-ID"] = request[REQUEST_ID]
    if request.remote:
        headers["X-Forwarded-For"] = request.remote
    headers["X-Forwarded-Proto"] = request.scheme
    return headers


async def native_api_unavailable(request: web.Request, *, embedded: bool) -> web.StreamResponse:
    """Ollama's own routes in front of something else. Model management is the
    question an operator asks most (`fognode models`, the status page), so the
    answer says where models come from on this node and what a pull needs."""
    if embedded:
        where = (
            "this node answers with its embedded model (llama.cpp), which it chose because "
            "no Ollama answered at start. Its models are the embedded one; pulling or "
            "removing models needs Ollama: run it on this machine and restart fognode, or "
            "name one with FOGNODE_UPSTREAM_URL"
        )
    else:
        where = (
            "this node's upstream is an OpenAI-compatible server, whose models are managed "
            "where it runs"
        )
    raise GatewayError(
        501,
        f"{request.path} is Ollama's native API, and {where}. The /v1 API serves the models "
        "this node has (GET /v1/models).",
        code="native_api_unavailable",
    )
