"""Upstreams that want a key, or answer with something other than what they
announce (issue 11, defects 9 and 10, and the upstream faults next to them)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import openai
import pytest
from aiohttp import web

from fognode.gateway import cli
from fognode.gateway.config.settings import Settings
from fognode.gateway.node.announce import AnnounceOptions, NodeAnnouncer, announcement
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pipeline import answers
from fognode.gateway.pipeline.admission import ADMISSION
from fognode.gateway.telemetry.stats import STATS
from fognode.gateway.upstreams.pool import UPSTREAM
from tests.support.gateway import GatewayFactory
from tests.support.helpers import free_port, wait_until

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
UPSTREAM_KEY = "sk-upstream-0123456789abcdef"
Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    """Serve aiohttp apps as upstreams on loopback for the test's duration."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def keyed_upstream(serve: Serve) -> str:
    """An upstream (llama.cpp's server with --api-key, vLLM) that answers 401
    to every request without its key, probes included."""

    @web.middleware
    async def require_key(request: web.Request, handler: Answer) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {UPSTREAM_KEY}":
            return web.json_response({"error": "bad key"}, status=401)
        return await handler(request)

    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "m1"}, {"name": "m2"}]})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m1"}, {"id": "m2"}]})

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "0.9.0"})

    app = web.Application(middlewares=[require_key])
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/version", version)
    app.router.add_get("/v1/models", models)
    return await serve(app)


@pytest.mark.parametrize("kind", ["ollama", "openai"])
async def test_the_upstream_key_goes_with_probes_and_model_lists(
    keyed_upstream: str, make_gateway: GatewayFactory, http: aiohttp.ClientSession, kind: str
) -> None:
    gateway = await make_gateway(keyed_upstream, upstream_kind=kind, upstream_api_key=UPSTREAM_KEY)
    async with http.get(f"{gateway.url}/readyz") as resp:
        body = await resp.json()
        assert resp.status == 200, body
    assert body["models"] == 2
    app = gateway.app
    base = announcement(
        Settings(upstream_kind=kind), port=gateway.port, ca_sha256="", auth="none", capacity=4
    )
    announcer = NodeAnnouncer(
        base, AnnounceOptions(10, 5), admission=app[ADMISSION], pool=app[UPSTREAM]
    )
    assert announcer.current_txt().models == ("m1", "m2")  # what mDNS announces
    # Several upstreams: the merged model list asks each one, with the key.
    several = await make_gateway(
        keyed_upstream,
        upstream_urls=[keyed_upstream, keyed_upstream],
        upstream_kind=kind,
        upstream_api_key=UPSTREAM_KEY,
    )
    path = "/v1/models" if kind == "openai" else "/api/tags"
    async with http.get(several.url + path) as resp:
        assert resp.status == 200
        listed = await resp.json()
    assert len(listed["data" if kind == "openai" else "models"]) == 2


@pytest.fixture
def fake_upstream(serve: Serve) -> Callable[[Answer], Awaitable[str]]:
    """An upstream whose chat answer each test writes itself."""

    async def start(answer: Answer) -> str:
        async def models(request: web.Request) -> web.Response:
            return web.json_response({"data": [{"id": "m1"}]})

        app = web.Application()
        app.router.add_post("/v1/chat/completions", answer)
        app.router.add_get("/v1/models", models)
        return await serve(app)

    return start


def sdk(gateway: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize(
    "body",
    [
        b"Internal error: worker crashed",
        b"<html><body>502 Bad Gateway</body></html>",
        b'{"id": "chatcmpl-1", "choices": [',
        b"\xff\xfe not even utf-8",
        b"",
    ],
)
async def test_a_success_that_is_not_json_is_a_502_the_sdk_understands(
    fake_upstream: Callable[[Answer], Awaitable[str]],
    make_gateway: GatewayFactory,
    body: bytes,
) -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    gateway = await make_gateway(await fake_upstream(garbage), upstream_kind="openai")
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk(gateway).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "upstream_invalid_json"  # type: ignore[index]


async def test_valid_json_passes_through_byte_for_byte_even_compressed(
    fake_upstream: Callable[[Answer], Awaitable[str]],
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
) -> None:
    payload = json.dumps(
        {"id": "c1", "object": "chat.completion", "created": 1, "model": "m1", "choices": []}
    ).encode()

    async def answer(request: web.Request) -> web.Response:
        if request.headers.get("Accept-Encoding") == "gzip":
            return web.Response(
                body=gzip.compress(payload),
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        return web.Response(body=payload, content_type="application/json")

    async def gzip_accepted(gateway: RunningServer) -> tuple[str | None, bytes]:
        async with http.post(
            f"{gateway.url}/v1/chat/completions",
            json=CHAT,
            headers={"Accept-Encoding": "gzip"},
            auto_decompress=False,
        ) as resp:
            assert resp.status == 200
            return resp.headers.get("Content-Encoding"), await resp.read()

    upstream = await fake_upstream(answer)
    # Without usage accounting the answer passes as the upstream encoded it.
    gateway = await make_gateway(upstream, upstream_kind="openai", usage_accounting=False)
    completion = await sdk(gateway).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert completion.id == "c1"
    encoding, body = await gzip_accepted(gateway)
    assert encoding == "gzip" and gzip.decompress(body) == payload
    # With it (the default), an inference answer is asked for uncompressed, so
    # that the token counter can read it: the same bytes, plain.
    gateway = await make_gateway(upstream, upstream_kind="openai")
    assert await gzip_accepted(gateway) == (None, payload)

    async def bad_gzip(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b"not json"),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    gateway = await make_gateway(await fake_upstream(bad_gzip), upstream_kind="openai")
    async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"]["code"] == "upstream_invalid_json"


async def test_answers_over_the_check_limit_are_relayed_unchecked_and_whole(
    fake_upstream: Callable[[Answer], Awaitable[str]],
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(answers, "CHECK_LIMIT", 4096)
    payload = json.dumps({"data": [{"embedding": [0.5] * 20_000}]}).encode()

    async def big(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for i in range(0, len(payload), 1000):
            await resp.write(payload[i : i + 1000])
        await resp.write_eof()
        return resp

    gateway = await make_gateway(await fake_upstream(big), upstream_kind="openai")
    async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        assert await resp.read() == payload

    async def compressed(request: web.Request) -> web.Response:
        # Small on the wire, over the limit inflated: not inflated to check it.
        return web.Response(
            body=gzip.compress(payload),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    gateway = await make_gateway(await fake_upstream(compressed), upstream_kind="openai")
    async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        assert await resp.read() == payload  # the client inflates it


async def raw_upstream(replies: list[bytes]) -> tuple[str, asyncio.Server]:
    """An upstream that answers each connection's request with the next raw reply
    (the gateway's own model-list checks, which carry no request id, get an
    empty list and take no reply)."""
    pending = list(replies)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            await reader.readexactly(length)
            if b"x-request-id" not in head.lower():
                writer.write(JSON_HEAD + b'Content-Length: 13\r\n\r\n{"models":[]}')
                await writer.drain()
                continue
            if not pending:
                break
            writer.write(pending.pop(0))
            await writer.drain()
            if not pending or b"close" in head.lower():
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", server


JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


@pytest.mark.parametrize(
    "reply",
    [
        JSON_HEAD + b"Content-Length: 100\r\n\r\n" + b'{"cut": "short',
        JSON_HEAD + b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\nzz\r\n',
        JSON_HEAD + b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":',
    ],
    ids=["content-length longer than the body", "bad chunk size", "chunked cut off"],
)
async def test_an_answer_that_breaks_off_is_a_502_not_a_truncated_200(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, reply: bytes
) -> None:
    url, server = await raw_upstream([reply])
    try:
        gateway = await make_gateway(url)
        async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 502
            code = (await resp.json())["error"]["code"]
            assert code in ("upstream_disconnected", "upstream_error")
    finally:
        server.close()


async def test_bytes_beyond_the_content_length_do_not_poison_the_next_answer(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    good = JSON_HEAD + b'Content-Length: 8\r\n\r\n{"n": 2}'
    url, server = await raw_upstream(
        [JSON_HEAD + b'Content-Length: 8\r\n\r\n{"n": 1}HTTP/1.1 200 OK\r\n\r\nsmuggled', good]
    )
    try:
        gateway = await make_gateway(url)
        for _ in range(2):
            async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
                assert resp.status in (200, 502)  # never the smuggled answer, never a 500
                text = await resp.text()
                assert "smuggled" not in text
    finally:
        server.close()


async def test_deeply_nested_upstream_json_is_an_unready_upstream_not_a_500(
    serve: Serve, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    deep = b'{"models": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    async def tags(request: web.Request) -> web.Response:
        return web.Response(body=deep, content_type="application/json")

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "1"})

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/version", version)
    app.router.add_get("/v1/models", tags)
    url = await serve(app)
    for kind in ("ollama", "openai"):
        gateway = await make_gateway(url, upstream_kind=kind)
        async with http.get(f"{gateway.url}/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"]["code"] == "upstream_unavailable"


async def test_an_upstream_password_is_never_shown(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(f"http://fognode:hunter2secret@127.0.0.1:{free_port()}")
    async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 502
        text = await resp.text()
    async with http.get(f"{gateway.url}/readyz") as resp:
        text += await resp.text()
    assert "hunter2secret" not in text
    assert "127.0.0.1" in text  # still names the upstream


async def test_an_upstream_parse_error_is_described_without_quoting_its_bytes(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A parser's error may quote the bytes it refuses: an upstream echoing the
    request's headers (the upstream key among them) must not reach the client."""
    echo = b"HTTP/1.1 2x0 Bearer " + UPSTREAM_KEY.encode() + b"\r\n\r\n"
    url, server = await raw_upstream([echo])
    try:
        gateway = await make_gateway(url, upstream_api_key=UPSTREAM_KEY)
        async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 502
            error = (await resp.json())["error"]
    finally:
        server.close()
    assert error["code"] == "upstream_error"
    assert UPSTREAM_KEY[:12] not in json.dumps(error)
    assert "not valid HTTP" in error["message"]  # still says what went wrong


@pytest.mark.parametrize(
    "reply",
    [
        JSON_HEAD + b"X-Odd: a\x01b\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 O\x01K\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Odd: \x7f\r\n"
        b"Content-Length: 14\r\n\r\ndata: [DONE]\n\n",
    ],
    ids=["control byte in a header", "control byte in the reason", "in a stream's header"],
)
async def test_upstream_headers_aiohttp_cannot_write_are_dropped_not_a_500(
    make_gateway: GatewayFactory, http: aiohttp.ClientSession, reply: bytes
) -> None:
    """aiohttp's client parses responses leniently and its server refuses to
    write control characters: relaying such a header failed the response."""
    url, server = await raw_upstream([reply])
    try:
        gateway = await make_gateway(url)
        async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
            assert resp.status == 200
            assert "X-Odd" not in resp.headers
            assert await resp.read() in (b"{}", b"data: [DONE]\n\n")
    finally:
        server.close()


async def test_a_client_that_stops_reading_a_checked_answer_is_dropped(
    fake_upstream: Callable[[Answer], Awaitable[str]], make_gateway: GatewayFactory
) -> None:
    """Checked answers are written by the relay too: the client-write deadline holds."""
    payload = json.dumps({"id": "c1", "text": "w" * (12 * 1024 * 1024)}).encode()

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=payload, content_type="application/json")

    gateway = await make_gateway(
        await fake_upstream(big), upstream_kind="openai", client_write_timeout=0.5
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a reader that lags
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gateway.port))
    body = json.dumps(CHAT).encode()
    sock.send(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    stats = gateway.app[STATS]
    try:
        await wait_until(lambda: stats.client_disconnects_total == 1, "the reader dropped", 30)
    finally:
        sock.close()


def test_fognode_config_masks_an_upstream_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fognode config` promises its secrets masked; a URL password is one."""
    monkeypatch.setenv("FOGNODE_UPSTREAM_URL", "http://fognode:hunter2secret@10.0.0.5:11434")
    monkeypatch.setenv("FOGNODE_UPSTREAM_URLS", "http://a:b2secret@10.0.0.6:8000")
    assert cli.main(["config", "--no-tls"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # Every value, not the names: a setting may be called tls_ticket_secret.
    assert "secret" not in json.dumps(list(printed.values()))
    assert printed["upstream_url"].startswith("http://fognode@10.0.0.5:11434")
