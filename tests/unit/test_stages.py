"""Each stage of the pipeline on its own, on a bare aiohttp app.

The end-to-end tests drive the whole gateway; these pin down the subtle
logic of one stage at a time: what the request-context stage accepts as a
request id, how errors are shaped, what the access stage does with each
outcome of an authorizer, what the validation stage refuses, and how the
admission gates hand slots over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from fognode.auth.errors import AuthError, PolicyError, VerifierUnavailable
from fognode.auth.principal import Access, Principal
from fognode.gateway.core.errors import GatewayError
from fognode.gateway.core.keys import PRINCIPAL, REQUEST_ID
from fognode.gateway.pipeline.access import setup_access
from fognode.gateway.pipeline.admission import Admission, AdmissionCollector, Ticket
from fognode.gateway.pipeline.context import setup_request_context
from fognode.gateway.pipeline.openai_errors import setup_openai_errors
from fognode.gateway.pipeline.request_models import ChatCompletionRequest
from fognode.gateway.pipeline.routes import Body, RouteSpec, add_route
from fognode.gateway.pipeline.validation import REQUEST_BODY, BodyLimits, setup_validation
from fognode.gateway.telemetry.metrics import Metrics
from fognode.gateway.telemetry.stats import GatewayStats

Client = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


def admission(**overrides: Any) -> Admission:
    options: dict[str, Any] = {
        "max_concurrent": 1,
        "max_queue": 2,
        "per_user_concurrent": 1,
        "per_user_queue": 1,
        "queue_timeout": 5.0,
    }
    return Admission(**(options | overrides))


def metrics() -> Metrics:
    return Metrics(GatewayStats(), [AdmissionCollector(admission())])


# --- the request context ---------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (["req-1:abc/DEF+=_."], True),
        ([], False),  # none: one is minted
        (["x" * 129], False),  # too long for a log line
        (["has space"], False),
        (["id-a", "id-b"], False),  # two ids would name the request two ways
        (["fnk_" + "A" * 43], False),  # shaped like a credential: never logged
    ],
)
async def test_request_ids_are_accepted_only_when_harmless(
    aiohttp_client: Client, sent: list[str], kept: bool
) -> None:
    app = web.Application()
    setup_request_context(app, metrics())

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request[REQUEST_ID])

    app.router.add_get("/", echo)
    client = await aiohttp_client(app)
    resp = await client.get("/", headers=[("X-Request-ID", value) for value in sent])
    rid = await resp.text()
    assert resp.headers["X-Request-ID"] == rid
    assert resp.headers["Server"] == "fognode"
    assert (sent[:1] == [rid]) is kept
    if not kept:
        assert len(rid) == 32 and int(rid, 16) >= 0


async def test_the_access_line_names_the_caller_and_a_client_that_left(
    aiohttp_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application()
    setup_request_context(app, metrics())
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        request[PRINCIPAL] = Principal(uid="alice", kind="api_key")
        started.set()
        await asyncio.sleep(30)
        raise AssertionError("the client left")

    app.router.add_get("/slow", slow)
    client = await aiohttp_client(app)
    caplog.set_level(logging.INFO, logger="fognode.access")
    request = asyncio.ensure_future(client.get("/slow"))
    await started.wait()
    request.cancel()
    for _ in range(200):
        if any("uid=alice" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.01)
    [line] = [r.getMessage() for r in caplog.records if r.name == "fognode.access"]
    assert '"GET /slow" 499' in line and line.endswith("uid=alice")


# --- errors --------------------------------------------------------------------------


async def test_every_failure_leaves_in_openai_shape(
    aiohttp_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application()
    setup_request_context(app, metrics())
    setup_openai_errors(app)

    async def refused(request: web.Request) -> web.Response:
        raise GatewayError(429, "slow down", code="x", headers={"Retry-After": "3"})

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app.router.add_get("/refused", refused)
    app.router.add_post("/broken", broken)
    client = await aiohttp_client(app)

    cases = [
        ("GET", "/refused", 429, "x", "rate_limit_error"),
        ("GET", "/nowhere", 404, "unknown_route", "not_found_error"),
        ("GET", "/broken", 405, "method_not_allowed", "invalid_request_error"),
        ("POST", "/broken", 500, "internal_error", "api_error"),
    ]
    for method, path, status, code, kind in cases:
        resp = await client.request(method, path)
        body = await resp.json()
        assert resp.status == status, path
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert (body["error"]["code"], body["error"]["type"]) == (code, kind), path
    assert (await client.get("/refused")).headers["Retry-After"] == "3"
    assert (await client.get("/broken")).headers["Allow"] == "POST"
    resp = await client.post("/broken")
    assert resp.headers["X-Request-ID"] in (await resp.json())["error"]["message"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "unhandled error",
        "unhandled error",
    ]  # once per failed request, never the request's bytes


# --- access ----------------------------------------------------------------------------


class FakeAuthorizer:
    """Answers as the authorizer would for each kind of credential."""

    kinds = "apikey"

    def __init__(self) -> None:
        self.closed = False

    async def authorize(self, authorization: str | None, access: Access) -> Principal:
        if authorization is None:
            raise AuthError("missing_token", "no token")
        if authorization == "Bearer user" and access is Access.ADMIN:
            raise PolicyError("admin_required", "admins only")
        if authorization == "Bearer down":
            raise VerifierUnavailable("Google's keys cannot be fetched")
        if authorization in ("Bearer user", "Bearer admin"):
            return Principal(uid=authorization.split()[1], kind="api_key")
        raise AuthError("invalid_api_key", "unknown key")

    def close(self) -> None:
        self.closed = True


async def test_access_outcomes(aiohttp_client: Client) -> None:
    app = web.Application()
    authorizer = FakeAuthorizer()
    setup_openai_errors(app)
    setup_access(app, metrics(), authorizer=authorizer, build=FakeAuthorizer)

    async def who(request: web.Request) -> web.Response:
        principal = request.get(PRINCIPAL)
        return web.Response(text=principal.uid if principal else "-")

    add_route(app, RouteSpec("GET", "/open", Access.PUBLIC), who)
    add_route(app, RouteSpec("GET", "/user", Access.USER), who)
    add_route(app, RouteSpec("GET", "/admin", Access.ADMIN), who)
    app.router.add_get("/unlisted", who)  # not in the route table
    client = await aiohttp_client(app)

    table = [
        ("/open", None, 200, "-"),
        ("/user", None, 401, "missing_token"),
        ("/user", "Bearer nope", 401, "invalid_api_key"),
        ("/user", "Bearer user", 200, "user"),
        ("/admin", "Bearer user", 403, "admin_required"),
        ("/admin", "Bearer admin", 200, "admin"),
        ("/user", "Bearer down", 503, "auth_unavailable"),
        ("/unlisted", "Bearer admin", 500, "misconfigured"),
    ]
    for path, header, status, expected in table:
        resp = await client.get(path, headers={"Authorization": header} if header else {})
        assert resp.status == status, (path, header)
        if status == 200:
            assert await resp.text() == expected
            continue
        assert (await resp.json())["error"]["code"] == expected, (path, header)
        if status in (401, 403):
            assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="fognode"')
        if status == 503:
            assert resp.headers["Retry-After"] == "5"
    await client.close()
    assert not authorizer.closed  # injected: the caller's to close


async def test_an_authorizer_the_stage_builds_is_closed_with_the_app(
    aiohttp_client: Client,
) -> None:
    built: list[FakeAuthorizer] = []

    def build() -> FakeAuthorizer:
        built.append(FakeAuthorizer())
        return built[-1]

    app = web.Application()
    setup_access(app, metrics(), build=build)
    client = await aiohttp_client(app)
    assert len(built) == 1 and not built[0].closed
    await client.close()
    assert built[0].closed


# --- validation ------------------------------------------------------------------------


async def test_bodies_are_checked_before_anything_else_sees_them(
    aiohttp_client: Client,
) -> None:
    app = web.Application()
    setup_openai_errors(app)
    setup_validation(app, BodyLimits(max_bytes=2048, timeout=5))
    seen: list[Any] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request[REQUEST_BODY])
        return web.Response(text="ok")

    chat = RouteSpec(
        "POST",
        "/chat",
        Access.PUBLIC,
        forwarded=True,
        body=Body.VALIDATED,
        model=ChatCompletionRequest,
    )
    add_route(app, chat, record)
    add_route(
        app, RouteSpec("POST", "/json", Access.PUBLIC, forwarded=True, body=Body.JSON), record
    )
    client = await aiohttp_client(app)

    good = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "x"}]}'
    table: list[tuple[str, bytes, int, str | None]] = [
        ("/chat", good, 200, None),
        ("/chat", b"x" * 4096, 413, "request_too_large"),
        ("/chat", b"{not json", 400, "invalid_json"),
        ("/chat", b'{"model": "m", "messages": []}', 400, "invalid_value"),
        (
            "/chat",
            b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}',
            400,
            "invalid_value",
        ),
        ("/json", b"", 200, None),  # an empty body is no JSON to check
        ("/json", b"[1, 2]", 400, "invalid_json"),
    ]
    for path, body, status, code in table:
        resp = await client.post(path, data=body)
        assert resp.status == status, (path, body[:40])
        if code is not None:
            assert (await resp.json())["error"]["code"] == code
    first = seen[0]
    assert first.data == good  # the client's exact bytes, not a re-serialisation
    assert first.model == "m" and first.streams_sse is True
    assert seen[1].data == b"" and seen[1].parsed is None
    assert len(seen) == 2  # nothing refused got through


# --- admission --------------------------------------------------------------------------


async def test_a_released_slot_goes_to_the_first_waiter_without_a_gap() -> None:
    gate = admission(per_user_concurrent=4, per_user_queue=4)
    first = await gate.acquire("a")
    waiting = asyncio.ensure_future(gate.acquire("b"))
    await asyncio.sleep(0)
    assert gate.active == 1 and gate.queued == 1
    gate.release(first)
    # Handed over, not freed and taken again: nobody can slip in between.
    assert gate.active == 1 and gate.queued == 0
    gate.release(await waiting)
    assert gate.active == 0


async def test_a_free_slot_is_taken_at_once_but_never_ahead_of_a_waiter() -> None:
    gate = admission(max_concurrent=2, per_user_concurrent=1, per_user_queue=1)
    first = gate.try_acquire("a")
    assert first is not None and gate.active == 1
    assert gate.try_acquire("a") is None  # "a" is at its own cap
    second = gate.try_acquire("b")
    assert second is not None and gate.active == 2
    assert gate.try_acquire("c") is None  # the node is full
    waiting = asyncio.ensure_future(gate.acquire("c"))
    await asyncio.sleep(0)
    assert gate.queued == 1
    gate.release(second)  # handed to the waiter ...
    assert gate.try_acquire("d") is None  # ... not to a newcomer
    gate.release(await waiting)
    gate.release(first)
    assert gate.active == 0 and gate.queued == 0


async def test_a_waiter_cancelled_as_its_slot_arrives_passes_it_on() -> None:
    gate = admission(per_user_concurrent=4, per_user_queue=4)
    first = await gate.acquire("a")
    leaving = asyncio.ensure_future(gate.acquire("b"))
    staying = asyncio.ensure_future(gate.acquire("c"))
    await asyncio.sleep(0)
    gate.release(first)  # the slot is handed to "b" ...
    leaving.cancel()  # ... which leaves before it runs again
    with pytest.raises(asyncio.CancelledError):
        await leaving
    gate.release(await asyncio.wait_for(staying, 1))  # "c" got it
    assert gate.active == 0 and gate.queued == 0


@pytest.mark.parametrize(
    ("overrides", "status", "code"),
    [
        ({"per_user_queue": 0}, 429, "user_concurrency_limit"),  # the user's own cap
        ({"per_user_concurrent": 4, "max_queue": 0}, 503, "node_busy"),  # the node's
        ({"per_user_concurrent": 4, "queue_timeout": 0.05}, 503, "queue_timeout"),
    ],
)
async def test_refusals_say_when_to_come_back(
    overrides: dict[str, Any], status: int, code: str
) -> None:
    gate = admission(**overrides)
    held = await gate.acquire("alice")
    with pytest.raises(GatewayError) as refused:
        await gate.acquire("alice", Ticket())
    assert (refused.value.status, refused.value.code) == (status, code)
    assert int(refused.value.headers["Retry-After"]) >= 1
    gate.release(held)
    assert gate.active == 0 and gate.queued == 0
    assert not gate._users  # no per-user state left behind
