"""The benchmark's own pieces work (the benchmark itself is not part of the suite).

bench/ measures; these check that what it measures with can be trusted: the
compiled upstream builds and speaks Ollama's wire format to real clients,
the bench's clients read it right, and its parsers and report handle sample
output. No figure is asserted here.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from bench import fastup
from bench.loadgen import (
    Endpoint,
    _connect,
    _events,
    chat_body,
    hold_streams,
    paced_delays,
)
from bench.targets import baseline_package
from tests.support.helpers import free_port


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        fastup.command(port, events=5, paced_events=3, paced_us=2000),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("fastup listening on 127.0.0.1:")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.status, dict(resp.headers), resp.read()


def test_upstream_answers_the_listings_and_probes(upstream: int) -> None:
    assert json.loads(get(upstream, "/api/version")[2]) == {"version": "0.12.6"}
    models = json.loads(get(upstream, "/v1/models")[2])
    assert [m["id"] for m in models["data"]] == ["llama3.2:1b", "paced", "slow"]
    tags = json.loads(get(upstream, "/api/tags")[2])
    assert {m["name"] for m in tags["models"]} == {"llama3.2:1b", "paced", "slow"}


def test_upstream_streams_to_the_official_client(upstream: int) -> None:
    """The OpenAI SDK (httpx underneath) reads the chunked SSE stream and the
    small answer; every content event carries the upstream's monotonic time."""
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{upstream}/v1", api_key="none")
    messages = [{"role": "user", "content": "hi"}]
    answer = client.chat.completions.create(model="llama3.2:1b", messages=messages)
    assert answer.choices[0].message.role == "assistant"
    before = time.monotonic_ns()
    chunks = list(
        client.chat.completions.create(model="llama3.2:1b", messages=messages, stream=True)
    )
    after = time.monotonic_ns()
    stamps = [int(c.choices[0].delta.content) for c in chunks if c.choices[0].delta.content]
    assert len(stamps) == 5
    assert before <= stamps[0] <= stamps[-1] <= after
    assert chunks[-1].choices[0].finish_reason == "stop"
    client.close()


def test_one_connection_carries_many_answers(upstream: int) -> None:
    """Keep-alive, chunked framing and pipelined reads, through the bench's
    own reader: the next response starts where the last one ended."""
    endpoint = Endpoint("127.0.0.1", upstream)
    with _connect(endpoint) as sock:
        for _ in range(3):
            sock.sendall(endpoint.request(chat_body(stream=True)))
            events = [event for _, event in _events(sock, b"")]
            assert len(events) == 7  # 5 content events, the finish, [DONE]
            assert events[-1] == b"data: [DONE]"
        sock.sendall(endpoint.request(chat_body()))
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Length:" in head


def test_a_stream_that_asks_for_usage_ends_with_ollamas_usage_chunk(upstream: int) -> None:
    """What fognode's accounting asks a streamed upstream for (and strips
    again): only a request with include_usage gets the extra chunk."""
    endpoint = Endpoint("127.0.0.1", upstream)
    asking = json.loads(chat_body(stream=True))
    asking["stream_options"] = {"include_usage": True}
    with _connect(endpoint) as sock:
        sock.sendall(endpoint.request(json.dumps(asking)))
        events = [event for _, event in _events(sock, b"")]
        sock.sendall(endpoint.request(chat_body(stream=True)))
        plain = [event for _, event in _events(sock, b"")]
    assert len(events) == 8  # 5 content events, the finish, the usage chunk, [DONE]
    usage = json.loads(events[-2].removeprefix(b"data: "))
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}
    assert len(plain) == 7 and b'"usage"' not in b"".join(plain)


def test_paced_delays_are_one_way_and_apart_from_the_request(upstream: int) -> None:
    got = paced_delays(Endpoint("127.0.0.1", upstream), streams=2, events=3)
    assert len(got.first_us) == 2
    assert len(got.later_us) == 4
    assert all(d >= 0 for d in got.first_us + got.later_us)


def test_held_streams_are_counted_at_both_ends(upstream: int) -> None:
    def tagged(tag: str) -> int:
        return int(json.loads(get(upstream, f"/bench/stats?tag={tag}")[2])["open_tagged"])

    async def hold() -> None:
        async with hold_streams(Endpoint("127.0.0.1", upstream), 20, tag="t1") as held:
            assert held.opened == 20
            assert held.failures == []
            assert await asyncio.to_thread(tagged, "t1") == 20
            assert await asyncio.to_thread(tagged, "other") == 0

    asyncio.run(hold())
    deadline = time.monotonic() + 5
    while tagged("t1") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tagged("t1") == 0


def test_upstream_refuses_a_chat_request_without_a_model(upstream: int) -> None:
    with socket.create_connection(("127.0.0.1", upstream), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        assert sock.recv(4096).startswith(b"HTTP/1.1 400 Bad Request")


def test_a_baseline_checkout_is_what_fognode_imports_on_its_path(tmp_path: Path) -> None:
    """--baseline: the other checkout's parts come before this editable install."""
    checkout = tmp_path / "base"
    for part in ("gateway", "tests"):
        (checkout / part).mkdir(parents=True)
        (checkout / part / "__init__.py").write_text(f"WHERE = {str(checkout)!r}\n")
    root = baseline_package(checkout, tmp_path / "run")
    assert sorted(p.name for p in (root / "fognode").iterdir()) == ["gateway"]
    where = subprocess.run(
        [sys.executable, "-c", "import fognode.gateway as g; print(g.WHERE)"],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where == str(checkout)
