"""The seventh stage: forward the request to an upstream, and relay its answer back.

By the time a request gets here it is authorised (access.py), its body is
read and checked (validation.py) and, for inference, it holds an admission
slot (admission.py). The proxy picks an upstream that has the model (the
least busy first), sends the client's bytes with only the documented edits
(compat.py), fails over to the next upstream only when nothing was sent, and
hands the answer to the relay (answers.py checks plain JSON answers first,
relay.py streams the rest).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web
from multidict import CIMultiDict

from .admission import KEEPALIVE
from .answers import relay_answer
from .compat import RouteEdits, model_not_found_message
from .context import REQUEST_ID
from .errors import GatewayError
from .keepalive import KeepAlive
from .metrics import Metrics
from .relay import RelayOptions
from .request_target import upstream_target
from .routes import PROXIED_ROUTES, Handler, RouteSpec, add_route
from .stats import GatewayStats
from .upstream import Upstream, UpstreamNotReached, filter_request_headers
from .upstream_pool import UpstreamPool
from .validation import REQUEST_BODY

log = logging.getLogger("fognode.gateway")

UPSTREAM = web.AppKey("fognode.upstream", UpstreamPool)


def setup_proxy(
    app: web.Application,
    pool: UpstreamPool,
    relay: RelayOptions,
    *,
    metrics: Metrics,
    stats: GatewayStats,
    routes: tuple[RouteSpec, ...] = PROXIED_ROUTES,
) -> None:
    """Register the forwarded routes; the pool lives as long as the app."""
    app[UPSTREAM] = pool

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await pool.start()
        yield
        await pool.close()

    app.cleanup_ctx.append(lifecycle)
    sender = _Sender(pool, relay, metrics, stats)
    for spec in routes:
        add_route(app, spec, sender.handler_for(spec))


class _Sender:
    """What every forwarded route shares: the pool, the relay's options, the counters."""

    def __init__(
        self, pool: UpstreamPool, relay: RelayOptions, metrics: Metrics, stats: GatewayStats
    ) -> None:
        self.pool, self.relay, self.metrics, self.stats = pool, relay, metrics, stats

    def handler_for(self, spec: RouteSpec) -> Handler:
        if spec.native and self.pool.kind != "ollama":
            return native_api_unavailable
        if spec.listing is not None and not self.pool.single:
            key, id_field = spec.listing.value

            async def listing(request: web.Request) -> web.StreamResponse:
                merged = await self.pool.merged_listing(upstream_target(request), key, id_field)
                return web.json_response(merged)

            return listing

        async def forward(request: web.Request) -> web.StreamResponse:
            body = request[REQUEST_BODY]
            data = body.data
            if spec.request_edit is not None and body.parsed is not None:
                assert isinstance(data, bytes)
                data = spec.request_edit(data, body.parsed, self.pool.kind)
            response = await self.send(
                request, data, body.model, spec.edits, request.get(KEEPALIVE)
            )
            if spec.changes_models and response.status < 400:
                await self.pool.refresh()  # the node's model list changed
            return response

        return forward

    async def send(
        self,
        request: web.Request,
        data: object,
        model: str | None,
        edits: RouteEdits,
        keepalive: KeepAlive | None,
    ) -> web.StreamResponse:
        """Send to the best upstream; when nothing could be sent, try the next one."""
        pool = self.pool
        if model and pool.kind != "ollama" and pool.lacks_model(model):
            # The wording the SpeziLLMFog app matches on (compat.py).
            raise GatewayError(
                404, model_not_found_message(model), type="not_found_error", code="model_not_found"
            )
        candidates = [m for m in pool.candidates(model) if not pool.at_cap(m)]
        if not candidates:
            raise GatewayError(
                503,
                f"Every upstream is at its limit of {pool.cap} requests; retry later.",
                code="upstreams_busy",
                headers={"Retry-After": "1"},
            )
        if data is not None and not isinstance(data, bytes):
            candidates = candidates[:1]  # a streamed body can be sent only once
        headers = _upstream_headers(request)
        for index, member in enumerate(candidates):
            try:
                return await self._send_to(request, member, headers, data, model, edits, keepalive)
            except UpstreamNotReached as exc:
                if index == len(candidates) - 1:
                    raise
                pool.mark_down(member, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send_to(
        self,
        request: web.Request,
        upstream: Upstream,
        headers: CIMultiDict[str],
        data: object,
        model: str | None,
        edits: RouteEdits,
        keepalive: KeepAlive | None,
    ) -> web.StreamResponse:
        stats = self.stats
        stats.active_requests += 1
        upstream.active += 1
        try:
            started = time.perf_counter()
            try:
                answer = await upstream.open(
                    request.method, upstream_target(request), headers=headers.copy(), data=data
                )
            except UpstreamNotReached:
                stats.upstream_up = False
                raise
            stats.upstream_up = True
            route = request.match_info.route.resource
            self.metrics.first_byte_after(
                route.canonical if route else "other", time.perf_counter() - started
            )
            if keepalive is not None:
                try:
                    await keepalive.settle()  # no heartbeat mid-write from here on
                except BaseException:
                    answer.close()
                    raise
            return await relay_answer(
                request,
                answer,
                options=self.relay,
                edits=edits,
                upstream_name=upstream.base,
                model=model,
                keepalive=keepalive,
                stats=stats,
            )
        finally:
            stats.active_requests -= 1
            upstream.active -= 1


def _upstream_headers(request: web.Request) -> CIMultiDict[str]:
    """The client's headers as the upstream gets them: hop-by-hop fields and
    the client's credentials dropped, where the request came from added."""
    headers = filter_request_headers(request.headers)
    headers["X-Request-ID"] = request[REQUEST_ID]
    if request.remote:
        headers["X-Forwarded-For"] = request.remote
    headers["X-Forwarded-Proto"] = request.scheme
    return headers


async def native_api_unavailable(request: web.Request) -> web.StreamResponse:
    raise GatewayError(
        501,
        f"{request.path} is Ollama's native API, and this node's upstream is an "
        "OpenAI-compatible server: use the /v1 API.",
        code="native_api_unavailable",
    )
