"""Requests no honest client sends: each gets a 4xx in OpenAI's shape, and
nothing ambiguous reaches the upstream (issue 11, defects 3 to 6 and 8, and
what was found next to them)."""

from __future__ import annotations

import gzip
import json
import logging
import zlib

import pytest

from fognode.auth.api_keys import entry_for, new_key
from fognode.gateway.node.server import RunningServer
from tests.support.gateway import GatewayFactory
from tests.support.helpers import CHAT_BYTES as CHAT
from tests.support.ollama_standin import OllamaStandIn
from tests.support.raw_http import RawResponse, exchange, request

KEY = new_key()
AUTH = ("Authorization", f"Bearer {KEY}")


@pytest.fixture
async def keyed_gateway(standin: OllamaStandIn, make_gateway: GatewayFactory) -> RunningServer:
    return await make_gateway(
        standin.url, auth="firebase", api_keys=[entry_for(KEY, "tester", admin=True)]
    )


async def send(keyed_gateway: RunningServer, data: bytes) -> RawResponse:
    return await exchange(keyed_gateway.port, data)


def assert_gateway_error(resp: RawResponse, status: int, code: str | None = None) -> None:
    assert resp.status == status, resp.raw[:300]
    error = resp.error()
    if code is not None:
        assert error["code"] == code, error
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["server"] == "fognode"  # no software versions, on any path


MALFORMED = {
    "bare LF line endings": b"GET /v1/models HTTP/1.1\nHost: x\nAuthorization: Bearer abc\n\n",
    "control byte in a header": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    "folded header": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "bad method": b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    "TLS to the plain port": bytes.fromhex("16030100a5010000a10303") + b"\x00" * 40,
    "two Content-Lengths": b"POST /api/show HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 3\r\n\r\n{}",
    "two Hosts": b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "Transfer-Encoding and Content-Length": b"POST /api/show HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "broken chunk size": b"POST /api/show HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"\r\nzz\r\n{}\r\n0\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_http_is_a_400_in_openai_shape(
    keyed_gateway: RunningServer, standin: OllamaStandIn, case: str
) -> None:
    resp = await send(keyed_gateway, MALFORMED[case])
    assert_gateway_error(resp, 400, "malformed_http")
    assert not standin.forwarded


async def test_oversized_headers_are_431_and_long_urls_414(keyed_gateway: RunningServer) -> None:
    long_header = request("GET", "/v1/models", [("Authorization", "Bearer " + "a" * 20_000)])
    assert_gateway_error(await send(keyed_gateway, long_header), 431, "headers_too_large")
    many = request("GET", "/v1/models", [(f"X-H{i}", "v") for i in range(200)])
    assert_gateway_error(await send(keyed_gateway, many), 431, "headers_too_large")
    long_url = request("GET", "/v1/models?q=" + "a" * 9000, [AUTH])
    assert_gateway_error(await send(keyed_gateway, long_url), 414, "uri_too_long")


async def test_absolute_form_targets_are_served_and_forwarded_in_origin_form(
    keyed_gateway: RunningServer, standin: OllamaStandIn
) -> None:
    """RFC 9112 section 3.2.2: a server must accept absolute-form."""
    resp = await send(
        keyed_gateway, request("GET", "http://spezillmfog.local/v1/models?x=1", [AUTH])
    )
    assert resp.status == 200, resp.raw[:300]
    assert {m["id"] for m in resp.json()["data"]} == set(standin.models)
    seen = standin.last("/v1/models")
    assert seen.query == "x=1"
    chat = request("POST", "http://other.example/v1/chat/completions", [AUTH], CHAT)
    assert (await send(keyed_gateway, chat)).status == 200
    assert standin.last("/v1/chat/completions").method == "POST"


PATH_TRICKS = [
    "/v1/models/../../api/ps",
    "/v1/models/..%2F..%2Fapi%2Fps",
    "/v1/models/%2e%2e/%2E%2E/api/ps",
    "/v1/models/.%2e/x",
    "/v1/models/x/./y",
    "/v1/models/..\\..\\api\\ps",
    "/v1/models/x%5c..%5capi",
    "/v1/models//x",
    "/v1/models/a%00b",
    "/v1/models/a%0d%0aX-Injected:%201",
    "/v1/models/%252e%252e/x",
    "/v1/models/%2541",
    "/v1/models/%zz",
    "/v1/models/%e2%28",
    "/api/blobs/..%2F..%2Fapi%2Fdelete",
]


@pytest.mark.parametrize("path", PATH_TRICKS)
async def test_path_tricks_are_refused_before_anything_is_forwarded(
    keyed_gateway: RunningServer, standin: OllamaStandIn, path: str
) -> None:
    method = "HEAD" if path.startswith("/api/blobs") else "GET"
    resp = await send(keyed_gateway, request(method, path, [AUTH]))
    assert resp.status == 400, resp.raw[:300]
    if method == "GET":
        assert resp.error()["code"] == "invalid_path"
    assert not standin.forwarded


async def test_encoded_slashes_in_model_names_still_reach_the_upstream(
    keyed_gateway: RunningServer, standin: OllamaStandIn
) -> None:
    """The openai SDK percent-encodes '/' in a model id (hf.co/org/model)."""
    await send(keyed_gateway, request("GET", "/v1/models/hf.co%2Forg%2Fmodel:q4", [AUTH]))
    assert [r.path for r in standin.forwarded] == ["/v1/models/hf.co/org/model:q4"]


async def test_transfer_codings_other_than_chunked_are_501(
    keyed_gateway: RunningServer, standin: OllamaStandIn
) -> None:
    """aiohttp frames by the final 'chunked' and ignores a gzip before it."""
    head = request("POST", "/api/show", [AUTH, ("Transfer-Encoding", "gzip, chunked")])
    resp = await send(keyed_gateway, head + b"2\r\n{}\r\n0\r\n\r\n")
    assert_gateway_error(resp, 501, "unsupported_transfer_encoding")
    assert not standin.forwarded


async def test_two_authorization_headers_are_refused(
    keyed_gateway: RunningServer, standin: OllamaStandIn
) -> None:
    for second in (f"Bearer {KEY}", "Bearer someone-elses-token"):
        resp = await send(
            keyed_gateway, request("GET", "/v1/models", [AUTH, ("Authorization", second)])
        )
        assert_gateway_error(resp, 400, "duplicate_header")
        assert "Authorization" in resp.error()["message"]
    assert not standin.forwarded


async def test_a_repeated_request_id_is_replaced_not_picked(
    keyed_gateway: RunningServer, standin: OllamaStandIn
) -> None:
    resp = await send(
        keyed_gateway,
        request("GET", "/v1/models", [AUTH, ("X-Request-ID", "a"), ("X-Request-ID", "b")]),
    )
    assert resp.status == 200
    assert resp.headers["x-request-id"] not in ("a", "b")
    assert standin.last("/v1/models").headers["X-Request-ID"] == resp.headers["x-request-id"]


async def test_a_request_id_shaped_like_a_credential_is_replaced(
    keyed_gateway: RunningServer, standin: OllamaStandIn
) -> None:
    """It would go into every log line, and to the upstream."""
    resp = await send(keyed_gateway, request("GET", "/v1/models", [AUTH, ("X-Request-ID", KEY)]))
    assert resp.status == 200
    assert resp.headers["x-request-id"] != KEY
    assert standin.last("/v1/models").headers["X-Request-ID"] == resp.headers["x-request-id"]


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
async def test_compressed_bodies_are_forwarded_inflated_without_their_encoding(
    keyed_gateway: RunningServer, standin: OllamaStandIn, encoding: str, compress: object
) -> None:
    assert callable(compress)
    chat = request(
        "POST",
        "/v1/chat/completions",
        [AUTH, ("Content-Type", "application/json"), ("Content-Encoding", encoding)],
        compress(CHAT),
    )
    resp = await send(keyed_gateway, chat)
    assert resp.status == 200, resp.raw[:300]
    seen = standin.last("/v1/chat/completions")
    assert "Content-Encoding" not in seen.headers
    assert json.loads(seen.body) == json.loads(CHAT)
    blob = request(
        "POST",
        "/api/blobs/sha256:" + "0" * 64,
        [AUTH, ("Content-Encoding", encoding)],
        compress(b"model bytes"),
    )
    assert (await send(keyed_gateway, blob)).status == 201
    seen = standin.last("/api/blobs/sha256:" + "0" * 64)
    assert "Content-Encoding" not in seen.headers and seen.body == b"model bytes"


async def test_undecodable_bodies_are_400_without_an_error_log(
    keyed_gateway: RunningServer, standin: OllamaStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = [AUTH, ("Content-Type", "application/json")]
    for encoding in ("gzip", "deflate", "br", "zstd"):
        body = b"this is not " + encoding.encode()
        chat = request("POST", "/v1/chat/completions", [*headers, ("Content-Encoding", encoding)])
        resp = await send(
            keyed_gateway, chat.replace(b"\r\n\r\n", b"\r\nContent-Length: 40\r\n\r\n") + body
        )
        assert resp.status == 400, (encoding, resp.raw[:300])
        resp.error()
    two = request(
        "POST",
        "/v1/chat/completions",
        [*headers, ("Content-Encoding", "gzip"), ("Content-Encoding", "identity")],
        gzip.compress(CHAT),
    )
    assert_gateway_error(await send(keyed_gateway, two), 400, "duplicate_header")
    assert not standin.forwarded
    # A streamed upload (model blobs) is the client's fault too, not the upstream's.
    blob = request(
        "POST", "/api/blobs/sha256:" + "0" * 64, [AUTH, ("Content-Encoding", "gzip")], b"x" * 4000
    )
    assert_gateway_error(await send(keyed_gateway, blob), 400, "invalid_body")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_gzip_bomb_is_413_after_at_most_the_body_limit(
    keyed_gateway: RunningServer, standin: OllamaStandIn
) -> None:
    bomb = gzip.compress(b'{"model": "' + b"a" * (64 * 1024 * 1024) + b'"}')
    chat = request(
        "POST", "/v1/chat/completions", [AUTH, ("Content-Encoding", "gzip")], bomb
    )  # 64 KiB on the wire, 64 MiB inflated
    assert_gateway_error(await send(keyed_gateway, chat), 413, "request_too_large")
    assert not standin.forwarded


@pytest.mark.parametrize("depth", [65, 100_000])
async def test_deeply_nested_json_bodies_are_400(
    keyed_gateway: RunningServer, standin: OllamaStandIn, depth: int
) -> None:
    body = b"[" * depth + b"]" * depth
    resp = await send(keyed_gateway, request("POST", "/v1/chat/completions", [AUTH], body))
    assert_gateway_error(resp, 400, "json_too_deep")
    nested = b'{"model": "llama3.2:1b", "x": ' + b"[" * depth + b"]" * depth + b"}"
    resp = await send(keyed_gateway, request("POST", "/api/chat", [AUTH], nested))
    assert_gateway_error(resp, 400, "json_too_deep")
    assert not standin.forwarded


async def test_json_nested_64_levels_is_still_served(
    keyed_gateway: RunningServer, standin: OllamaStandIn
) -> None:
    schema = b'{"model": "llama3.2:1b", "format": ' + b"[" * 63 + b"]" * 63 + b"}"
    resp = await send(keyed_gateway, request("POST", "/api/chat", [AUTH], schema))
    assert resp.status == 200
    assert standin.last("/api/chat").body == schema


@pytest.mark.parametrize("version", ["HTTP/0.9", "HTTP/2.0", "HTTP/3.0"])
async def test_other_http_versions_are_505(keyed_gateway: RunningServer, version: str) -> None:
    resp = await send(keyed_gateway, f"GET /healthz {version}\r\nHost: x\r\n\r\n".encode())
    assert resp.raw.startswith(b"HTTP/")
    if resp.status != 400:  # the parser may refuse the version itself
        assert_gateway_error(resp, 505, "http_version_not_supported")


async def test_an_unknown_expectation_is_417_in_openai_shape(keyed_gateway: RunningServer) -> None:
    for path in ("/api/show", "/nowhere"):
        resp = await send(keyed_gateway, request("POST", path, [AUTH, ("Expect", "200-ok")], b"{}"))
        assert_gateway_error(resp, 417, "expectation_failed")
        assert "200-ok" not in resp.error()["message"]  # the request is never quoted


async def test_connect_options_trace_and_head(
    keyed_gateway: RunningServer, standin: OllamaStandIn
) -> None:
    connect = (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n"
    )
    resp = await send(keyed_gateway, connect)
    assert resp.status is not None and 400 <= resp.status < 500
    resp.error()
    assert_gateway_error(await send(keyed_gateway, request("OPTIONS", "*")), 404, "unknown_route")
    assert_gateway_error(await send(keyed_gateway, request("TRACE", "/v1/models", [AUTH])), 405)
    head = await send(keyed_gateway, request("HEAD", "/healthz"))
    assert head.status == 405 and head.headers["allow"] == "GET"
    assert not standin.forwarded


@pytest.mark.parametrize(
    "upgrade",
    [
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        [("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAAQAAP__"), ("Connection", "Upgrade")],
    ],
)
async def test_protocol_upgrades_are_declined(
    keyed_gateway: RunningServer, standin: OllamaStandIn, upgrade: list[tuple[str, str]]
) -> None:
    resp = await send(keyed_gateway, request("GET", "/v1/models", [AUTH, *upgrade]))
    assert resp.status == 200  # served as plain HTTP, never 101
    seen = {k.lower() for k in standin.last("/v1/models").headers}
    assert not seen & {"upgrade", "http2-settings"}  # both hop-by-hop
