"""An HTTP-level fuzzer: raw request heads and bodies mutated from valid ones.

schemathesis (tests/gateway/test_fuzz.py) sends well-formed HTTP with odd
JSON; this sends odd HTTP. hypothesis mutates a few valid requests byte by byte and line by
line (control bytes, CR/LF, duplicated and dropped lines, framing headers,
path syntax) and sends them to `fognode serve` as a process. Whatever
arrives: no 500 and no 5xx of the gateway's own but its documented ones,
every error in OpenAI's shape, the credential never echoed, and the process
still up and serving afterwards with nothing unhandled in its log.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fognode.auth.api_keys import entry_for, new_key
from tests.support.helpers import CHAT_BYTES as CHAT
from tests.support.ollama_standin import OllamaStandIn
from tests.support.processes import NodeProcess
from tests.support.raw_http import RawResponse, exchange_blocking

KEY = new_key()
AUTH = f"Authorization: Bearer {KEY}\r\n".encode()


def _request(head: bytes, body: bytes = b"") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return head + b"Host: spezillmfog.local\r\n" + length + b"Connection: close\r\n\r\n" + body


SEEDS = [
    _request(b"GET /healthz HTTP/1.1\r\n"),
    _request(b"GET /v1/models HTTP/1.1\r\n" + AUTH),
    _request(b"GET /v1/models/llama3.2:1b HTTP/1.1\r\n" + AUTH),
    _request(
        b"POST /v1/chat/completions HTTP/1.1\r\n" + AUTH + b"Content-Type: application/json\r\n",
        CHAT,
    ),
    _request(
        b"POST /v1/chat/completions HTTP/1.1\r\n" + AUTH,
        CHAT.replace(b"}]}", b'}], "stream": true}'),
    ),
    _request(b"POST /api/chat HTTP/1.1\r\n" + AUTH, CHAT),
    _request(b"POST /api/show HTTP/1.1\r\n" + AUTH, b'{"model": "llama3.2:1b"}'),
    _request(
        b"POST /v1/embeddings HTTP/1.1\r\n" + AUTH, b'{"model": "nomic-embed-text", "input": "x"}'
    ),
    b"POST /api/generate HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n"
    b'Connection: close\r\n\r\n1c\r\n{"model": "llama3.2:1b", "p\r\n'
    b'10\r\nrompt": "hi"}    \r\n0\r\n\r\n',
]

# What HTTP parsers and path normalisers trip over.
TOKENS = [
    b"\r",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\x01",
    b"\x7f",
    b"\xff",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"%",
    b"%00",
    b"%2e",
    b"%2F",
    b"..",
    b"/",
    b"//",
    b"\\",
    b"?",
    b"#",
    b"@",
    b"*",
    b"0",
    b"9999999999",
    b"-1",
    b"chunked",
    b"gzip",
    b"identity",
    b"HTTP/1.0",
    b"HTTP/2.0",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Encoding: gzip\r\n",
    b"Expect: 100-continue\r\n",
    b"Host: other\r\n",
    b"Authorization: Bearer x\r\n",
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n",
    b"X-Request-ID: a\r\n",
    b"[[[[",
    b'{"',
]


HEADERS = [t for t in TOKENS if t.endswith(b"\r\n") and b": " in t] + [
    b"Content-Length: 0\r\n",
    b"Content-Length: 99\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Content-Encoding: deflate\r\n",
    b"Content-Encoding: br\r\n",
    b"Authorization: Basic dXNlcjpwYXNz\r\n",
    b"Authorization: \r\n",
    b"X-Request-ID: " + b"r" * 200 + b"\r\n",
    b"Connection: keep-alive, Authorization\r\n",
]
LINE_OPS = ["dup_line", "drop_line", "case"]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "replace", "delete", "header", *LINE_OPS]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "insert":
            data[at:at] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=4))
        elif op == "replace" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "header":  # a whole header line, where headers go
            line_end = data.find(b"\r\n") + 2
            data[line_end:line_end] = draw(st.sampled_from(HEADERS))
        else:
            lines = bytes(data).split(b"\r\n")
            index = draw(st.integers(0, len(lines) - 1))
            if op == "dup_line":
                lines.insert(index, lines[index])
            elif op == "drop_line" and len(lines) > 1:
                del lines[index]
            else:
                lines[index] = lines[index].swapcase()
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


class FuzzTarget:
    """The stand-in on a thread's loop, fognode serve as a process in front of it."""

    def __init__(self, workdir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.standin = OllamaStandIn()
        self.workdir = workdir
        self.node: NodeProcess | None = None

    def run(self, coro: object, limit: float = 60) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(limit)  # type: ignore[arg-type]

    def start(self) -> NodeProcess:
        self.thread.start()
        self.run(self.standin.start())
        self.node = NodeProcess(
            self.workdir,
            {
                "tls": "false",
                "upstream_url": self.standin.url,
                "api_keys": entry_for(KEY, "fuzzer", admin=True),
                "header_timeout": "0.5",
                "body_timeout": "0.5",
                "first_byte_timeout": "5",
                "max_concurrent_requests": "64",
                "per_user_concurrent_requests": "64",
                "max_connections_per_client": "0",
            },
        )
        self.run(self.node.start())
        return self.node

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
        self.run(self.standin.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def node_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    target = FuzzTarget(tmp_path_factory.mktemp("fuzz"))
    try:
        yield target.start()
    finally:
        target.stop()


# What a 5xx from the gateway may be: the upstream or admission, never itself.
DOCUMENTED_5XX = {
    "upstream_unreachable",
    "upstream_connect_timeout",
    "upstream_first_byte_timeout",
    "upstream_idle_timeout",
    "upstream_disconnected",
    "upstream_error",
    "upstream_invalid_json",
    "node_busy",
    "queue_timeout",
    "http_version_not_supported",
    "unsupported_transfer_encoding",
}


def fragments(secret: str) -> set[str]:
    return {secret[i : i + 8] for i in range(len(secret) - 7)}


def check(resp: RawResponse) -> None:
    assert resp.status != 500, resp.raw[:500]
    if resp.status is None or resp.status < 400:
        return
    text = resp.raw.decode("latin-1")
    assert not any(f in text for f in fragments(KEY)), text[:500]  # never echoed
    if not resp.body:
        return  # HEAD, or a connection refused before a body
    body = resp.json()
    if isinstance(body.get("error"), str):
        return  # Ollama's own native-API error, passed through untouched
    error = resp.error()  # asserts OpenAI's shape
    if resp.status >= 500:
        assert error["code"] in DOCUMENTED_5XX, resp.raw[:500]


@given(data=mutated())
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_mutated_requests_get_no_500_and_openai_shaped_errors(
    node_process: NodeProcess, data: bytes
) -> None:
    check(exchange_blocking(node_process.port, data, limit=5))
    assert node_process.alive


def test_the_node_survived_the_fuzzing_and_logged_nothing_unhandled(
    node_process: NodeProcess,
) -> None:
    """Runs after the fuzzer (same module-scoped node)."""
    ok = exchange_blocking(node_process.port, SEEDS[1])
    assert ok.status == 200
    log = node_process.log()
    assert "unhandled error" not in log and "Unhandled exception" not in log
    assert "Traceback" not in log
    assert not any(f in log for f in fragments(KEY))
