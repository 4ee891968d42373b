"""No credential in any log, at any level, in either format (issue 11, defect 1).

End to end: `fognode serve` runs as a process at DEBUG, once with text logs
over plain HTTP on uvloop, once with JSON logs over TLS on asyncio's loop,
both in the loop's debug mode (which makes asyncio and aiohttp log the most). Every
malformed-request and error path is driven with recognisable secrets in the
places credentials travel; then its whole stderr is searched for each
secret and every 8-character fragment of one.
"""

from __future__ import annotations

import gzip
import json
import re
import ssl
from pathlib import Path

import pytest

from fognode.auth.api_keys import entry_for
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import make_pki
from tests.support.processes import NodeProcess
from tests.support.raw_http import RawResponse, exchange
from tests.support.secrets import ADMIN_KEY, FORGED_JWT, OPAQUE, UPSTREAM_KEY, leaks
from tests.support.tokens import b64url


def hostile_requests(secret: str) -> list[bytes]:
    """Every malformed-request and error path, with ``secret`` as the credential."""
    s = secret.encode()
    host = b"Host: spezillmfog.local\r\n"
    auth = b"Authorization: Bearer " + s + b"\r\n"
    close = b"Connection: close\r\n"
    chat = b'{"model": "llama3.2:1b", "messages": [{"role": "user", "content": "hi"}]}'

    def req(head: bytes, body: bytes = b"") -> bytes:
        length = b"Content-Length: %d\r\n" % len(body) if body else b""
        return head + host + length + close + b"\r\n" + body

    deep = b64url(b"[" * 3000 + b"]" * 3000)
    return [
        # Refused by the HTTP parser (aiohttp.server's path).
        b"GET /v1/models HTTP/1.1\n" + host.replace(b"\r", b"") + auth.replace(b"\r", b"") + b"\n",
        req(
            b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer " + s[:9] + b"\x01" + s[9:] + b"\r\n"
        ),
        req(b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer\r\n " + s + b"\r\n"),
        req(b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer " + s + b"A" * 20_000 + b"\r\n"),
        req(b"GET /v1/models HTTP/1.1\r\nX-Note: " + s + b"\x00\r\n"),
        req(b"GET /v1/models?token=" + s + b"&pad=" + b"p" * 9000 + b" HTTP/1.1\r\n"),
        req(
            b"GET /v1/models HTTP/1.1\r\n" + auth + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
        ),
        req(b"G\x01T /v1/models HTTP/1.1\r\n" + auth),
        req(b"GET /v1/models HTTP/9.9\r\n" + auth),
        b"GET /v1/models HTTP/1.1\r\n" + host + auth + close + b"Content-Length: 1\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        b"POST /api/show HTTP/1.1\r\n" + host + auth + close + b"Transfer-Encoding: chunked\r\n"
        b"\r\nzz\r\n" + s + b"\r\n0\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + s,
        # Refused by the gateway (middlewares, auth).
        req(b"GET /v1/models HTTP/1.1\r\n" + auth + b"Authorization: Bearer other\r\n"),
        req(b"GET /v1/models HTTP/1.1\r\nAuthorization: Token " + s + b"\r\n"),
        req(b"GET /v1/models HTTP/1.1\r\nAuthorization: Basic " + s + b"\r\n"),
        req(b"GET /v1/models HTTP/1.1\r\nAuthorization: " + s + b"\r\n"),
        req(b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer " + s + b" " + s + b"\r\n"),
        req(b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer " + s * 300 + b"\r\n"),
        req(b"GET /v1/models HTTP/1.1\r\nAuthorization: Bearer " + deep.encode() + b".e30.x\r\n"),
        req(b"GET http://user:" + s + b"@spezillmfog.local/v1/models HTTP/1.1\r\n" + auth),
        req(b"GET /v1/models/..%2F..%2Fapi%2Fps HTTP/1.1\r\n" + auth),
        req(b"GET /v1/models/a%0d%0aX-Injected:%201 HTTP/1.1\r\n" + auth),
        req(b"POST /v1/chat/completions HTTP/1.1\r\n" + auth, b"[" * 100_000 + b"]" * 100_000),
        req(b"POST /v1/chat/completions HTTP/1.1\r\n" + auth, b'{"model": 1, "key": "' + s + b'"}'),
        req(b"POST /v1/chat/completions HTTP/1.1\r\n" + auth + b"Content-Encoding: gzip\r\n", s),
        req(
            b"POST /v1/chat/completions HTTP/1.1\r\n" + auth + b"Content-Encoding: gzip\r\n",
            gzip.compress(chat),
        ),
        req(b"POST /api/show HTTP/1.1\r\n" + auth + b"Expect: " + s + b"\r\n", b"{}"),
        req(b"POST /api/pull HTTP/1.1\r\n" + auth, b'{"model": "x"}'),
        req(b"DELETE /v1/models HTTP/1.1\r\n" + auth),
        req(b"CONNECT " + s + b":443 HTTP/1.1\r\n" + auth),
        req(
            b"GET /v1/models HTTP/1.1\r\n" + auth + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        ),
        # Served (or refused by the upstream): the success paths log too.
        req(b"GET /v1/models HTTP/1.1\r\n" + auth),
        req(b"POST /v1/chat/completions HTTP/1.1\r\n" + auth, chat),
        req(b"GET /v1/models/missing HTTP/1.1\r\n" + auth),
        req(b"GET /metrics HTTP/1.1\r\n" + auth),
        # Cut off mid-body.
        b"POST /v1/chat/completions HTTP/1.1\r\n" + host + auth + b"Content-Length: 500\r\n\r\n{",
    ]


@pytest.mark.parametrize(
    ("log_format", "tls", "loop"),
    [("text", False, "uvloop"), ("json", True, "asyncio")],
    ids=["text logs, HTTP, uvloop", "JSON logs, TLS, asyncio"],
)
async def test_no_secret_or_fragment_of_one_in_any_log_or_answer(
    standin: OllamaStandIn, tmp_path: Path, log_format: str, tls: bool, loop: str
) -> None:
    pki = make_pki(tmp_path / "certs")
    settings = {
        "tls": str(tls).lower(),
        "certs_dir": str(pki.paths.directory),
        "upstream_url": standin.url,
        "upstream_api_key": UPSTREAM_KEY,
        "api_keys": entry_for(ADMIN_KEY, "hygiene", admin=True),
        # JWTs go to firebase-admin, whose key fetch fails here: its error path too.
        "firebase_project_id": "hygiene-test",
        "firebase_certs_url": "http://127.0.0.1:9/certs",
        "log_level": "DEBUG",
        "log_format": log_format,
        "event_loop": loop,
        "body_timeout": "2",
        "client_first_byte_timeout": "2",
    }
    # Debug mode on the loop: asyncio and aiohttp.server log their DEBUG lines.
    node = NodeProcess(tmp_path, settings, env={"PYTHONASYNCIODEBUG": "1"})
    client_tls = ssl.create_default_context(cafile=str(pki.ca)) if tls else None
    await node.start(client_tls)
    answers: list[RawResponse] = []
    try:
        for secret in (ADMIN_KEY, OPAQUE, FORGED_JWT):
            for data in hostile_requests(secret):
                answers.append(await exchange(node.port, data, tls=client_tls, limit=10))
        await exchange(node.port, b"", tls=client_tls, limit=3)  # silent: reaped
    finally:
        assert await node.astop() == 0
    log = node.log()
    assert not leaks(log), leaks(log)
    for answer in answers:
        assert not leaks(answer.raw.decode("latin-1")), answer.raw[:300]
    # The paths were really taken, and logged at DEBUG.
    assert log.count("refused malformed HTTP") >= 3 * 8
    assert "malformed_token" in log
    assert {a.status for a in answers} >= {200, 400, 401, 404, 414, 431}
    if log_format == "json":
        for line in log.splitlines():
            json.loads(line)  # one JSON object per line, exceptions included
    # (With worker processes a text line names its process before the logger: "w1".)
    debug = r"DEBUG +(?:w\d+ )?aiohttp\.server" if log_format == "text" else '"level": "debug"'
    assert re.search(debug, log)
