"""Request handlers that forward to the upstream.

One generic handler does the forwarding; each route only chooses whether the
body is validated (and against which OpenAI shape) and whether it is read
whole or streamed through. The validated body is never re-serialised: the
client's exact bytes go upstream, so fields the gateway does not know about
(Ollama's ``options``, ``keep_alive``, ``think``...) arrive untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from pydantic import BaseModel

from .. import safejson
from .access import PRINCIPAL
from .answers import relay_answer
from .compat import model_not_found_message
from .errors import GatewayError, unreadable_body
from .keepalive import HeartbeatOptions, KeepAlive
from .limits import Admission, Ticket
from .metrics import METRICS
from .relay import RelayOptions, RouteEdits
from .request_models import parse_json_object, validate_body
from .request_target import upstream_target
from .stats import STATS
from .upstream import Upstream, filter_request_headers
from .upstream_pool import UNREACHABLE, UpstreamPool

UPSTREAM = web.AppKey("fognode.upstream", UpstreamPool)
ADMISSION = web.AppKey("fognode.admission", Admission)
RELAY_OPTIONS = web.AppKey("fognode.relay_options", RelayOptions)
HEARTBEAT_OPTIONS = web.AppKey("fognode.heartbeat_options", HeartbeatOptions)
REQUEST_ID = web.RequestKey("fognode.request_id", str)

RequestEdit = Callable[[bytes, dict[str, Any], str], bytes]
UNEDITED = RouteEdits()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger("fognode.gateway")


async def read_body(request: web.Request, limit: int, deadline: float) -> bytes:
    """Read the whole body, refusing early when Content-Length is too big,
    and giving up on a client that trickles it (slowloris) after ``deadline``."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(request.content_length, limit)
    try:
        async with asyncio.timeout(deadline):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(None, limit) from None
    except web.RequestPayloadError:
        raise unreadable_body() from None
    except TimeoutError:
        raise GatewayError(
            408,
            f"The request body did not arrive within {deadline:g}s (FOGNODE_BODY_TIMEOUT).",
            code="body_timeout",
            headers={"Connection": "close"},
        ) from None


def too_large(size: int | None, limit: int) -> GatewayError:
    got = f" ({size} bytes)" if size is not None else ""
    return GatewayError(
        413,
        f"Request body is too large{got}; the limit is {limit} bytes (FOGNODE_MAX_BODY_BYTES).",
        code="request_too_large",
    )


def forward(
    *,
    model: type[BaseModel] | None = None,
    json_body: bool = False,
    stream_body: bool = False,
    limited: bool = False,
    edits: RouteEdits = UNEDITED,
    request_edit: RequestEdit | None = None,
) -> Handler:
    """Build a handler that forwards the request to the same path upstream.

    ``model``: validate the JSON body against this OpenAI request shape.
    ``json_body``: the body, if any, must at least be a JSON object.
    ``stream_body``: pass the body through without reading it (model blobs
    can be gigabytes; they are exempt from the body limit).
    ``limited``: inference; wait for an admission slot (after validation, so a
    bad request never queues).
    ``edits`` and ``request_edit``: the route's compatibility edits (compat.py).
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        upstream = request.app[UPSTREAM]
        settings = upstream.settings
        data: object = None
        wanted_model: str | None = request.match_info.get("model")
        streams_sse = False
        if stream_body:
            data = request.content if request.body_exists else None
        elif request.body_exists or request.method in ("POST", "PUT", "PATCH"):
            body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
            if model is not None or (json_body and body.strip()):
                parsed = parse_json_object(body)
                if model is not None:
                    validate_body(model, parsed)
                    streams_sse = parsed.get("stream") is True
                if isinstance(parsed.get("model"), str):
                    wanted_model = parsed["model"]
                if request_edit is not None:
                    body = request_edit(body, parsed, upstream.kind)
            data = body

        headers = filter_request_headers(request.headers)
        headers["X-Request-ID"] = request[REQUEST_ID]
        if request.remote:
            headers["X-Forwarded-For"] = request.remote
        headers["X-Forwarded-Proto"] = request.scheme

        keepalive = KeepAlive(request, request.app[HEARTBEAT_OPTIONS]) if streams_sse else None
        send = _Send(request, upstream, headers, data, wanted_model, edits, keepalive)
        try:
            if not limited:
                return await send()
            admission = request.app[ADMISSION]
            principal = request.get(PRINCIPAL)
            ticket = Ticket()
            if keepalive is not None:
                keepalive.status = lambda: _queued(admission.position(ticket))
            permit = await admission.acquire(principal.uid if principal else "anonymous", ticket)
            if keepalive is not None:
                keepalive.status = None
            try:
                return await send()
            finally:
                admission.release(permit)
        except GatewayError as exc:
            if keepalive is not None and keepalive.started:
                # The 200 headers are out (the request waited long): in-band.
                log.warning("%s (%s), reported in-band", exc.message, exc.code)
                return await keepalive.fail(exc)
            raise
        finally:
            if keepalive is not None:
                keepalive.close()

    return handler


def _queued(position: int | None) -> str | None:
    return f"queued {position}" if position is not None else None


class _Send:
    """The forwarding of one request, once it may go upstream."""

    __slots__ = ("data", "edits", "headers", "keepalive", "model", "pool", "request")

    def __init__(
        self,
        request: web.Request,
        pool: UpstreamPool,
        headers: CIMultiDict[str],
        data: object,
        model: str | None,
        edits: RouteEdits,
        keepalive: KeepAlive | None,
    ) -> None:
        self.request, self.pool, self.headers, self.data = request, pool, headers, data
        self.model, self.edits, self.keepalive = model, edits, keepalive

    async def __call__(self) -> web.StreamResponse:
        return await _send(self)


async def _send(job: _Send) -> web.StreamResponse:
    """Send to the best upstream; on a connection failure, before anything was
    sent, try the next one."""
    pool, model = job.pool, job.model
    if model and pool.kind != "ollama" and pool.lacks_model(model):
        # The wording the SpeziLLMFog app matches on (compat.py).
        raise GatewayError(
            404,
            model_not_found_message(model),
            type="not_found_error",
            code="model_not_found",
        )
    candidates = [m for m in pool.candidates(model) if not pool.at_cap(m)]
    if not candidates:
        raise GatewayError(
            503,
            f"Every upstream is at its limit of {pool.cap} requests; retry later.",
            code="upstreams_busy",
            headers={"Retry-After": "1"},
        )
    if job.data is not None and not isinstance(job.data, bytes):
        candidates = candidates[:1]  # a streamed body can be sent only once
    for index, member in enumerate(candidates):
        try:
            return await _send_to(job, member)
        except GatewayError as exc:
            if exc.code not in UNREACHABLE or index == len(candidates) - 1:
                raise
            pool.mark_down(member, exc)
    raise AssertionError("unreachable")  # pragma: no cover


async def _send_to(job: _Send, upstream: Upstream) -> web.StreamResponse:
    request = job.request
    stats = request.app[STATS]
    stats.active_requests += 1
    upstream.active += 1
    try:
        started = time.perf_counter()
        try:
            upstream_response = await upstream.open(
                request.method, upstream_target(request), headers=job.headers, data=job.data
            )
        except GatewayError as exc:
            if exc.code in UNREACHABLE:
                stats.upstream_up = False
            raise
        stats.upstream_up = True
        route = request.match_info.route.resource
        request.app[METRICS].first_byte.labels(route.canonical if route else "other").observe(
            time.perf_counter() - started
        )
        if job.keepalive is not None:
            try:
                await job.keepalive.settle()  # no heartbeat mid-write from here on
            except BaseException:
                upstream_response.close()
                raise
        return await relay_answer(
            request,
            upstream_response,
            options=request.app[RELAY_OPTIONS],
            edits=job.edits,
            upstream_name=upstream.base,
            model=job.model,
            keepalive=job.keepalive,
            stats=stats,
        )
    finally:
        stats.active_requests -= 1
        upstream.active -= 1


def forward_listing(key: str, id_field: str) -> Handler:
    """Model lists: one upstream's answer as is, or the union over several.

    ``key`` is the list in the JSON body ("data" for /v1/models, "models" for
    /api/tags) and ``id_field`` what identifies an entry in it.
    """
    single = forward()

    async def handler(request: web.Request) -> web.StreamResponse:
        pool = request.app[UPSTREAM]
        if pool.single:
            return await single(request)
        members = [m for m in pool.members if m.healthy is not False] or pool.members

        async def fetch(member: Upstream) -> dict[str, object]:
            async with asyncio.timeout(pool.settings.readiness_timeout):
                async with member.session.get(
                    member.url(upstream_target(request)), headers=member.auth_headers()
                ) as resp:
                    resp.raise_for_status()
                    body = safejson.loads(await resp.read())
            return body if isinstance(body, dict) else {}

        results = await asyncio.gather(*(fetch(m) for m in members), return_exceptions=True)
        bodies = [r for r in results if isinstance(r, dict)]
        if not bodies:
            raise GatewayError(
                502,
                f"No upstream answered the model list ({pool.base}).",
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
        return web.json_response(merged)

    return handler
