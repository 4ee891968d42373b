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
from typing import Any

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
    parse_wrk,
)
from bench.peers import report
from bench.profile import parse_collapsed
from bench.targets import baseline_package
from bench.usage import report as usage_report
from tests.helpers import free_port


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


WRK_SAMPLE = """\
Running 7s test @ http://127.0.0.1:40000/v1/chat/completions
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.50ms    0.40ms  10.00ms   90.00%
  10000 requests in 7.00s, 3.20MB read
Requests/sec:   1428.57
BENCH {"requests": 10000, "duration_us": 7000000, "bytes": 3200000, "connect": 0, \
"read": 0, "write": 0, "status": 0, "timeout": 0, "events": 660000, "bad": 0, \
"p50_us": 1400, "p90_us": 2000, "p99_us": 4100, "mean_us": 1500.0, "max_us": 10000, \
"checked": true, "first_bad": ""}
"""


def test_wrk_summary_is_parsed_and_judged() -> None:
    good = parse_wrk(WRK_SAMPLE)
    assert good.requests == 10000
    assert good.rps == pytest.approx(10000 / 7)
    assert good.events_per_s == pytest.approx(660000 / 7)
    assert (good.p50_ms, good.p99_ms) == (1.4, 4.1)
    assert good.problems() is None
    bad = parse_wrk(
        WRK_SAMPLE.replace('"status": 0', '"status": 3')
        .replace('"bad": 0', '"bad": 2')
        .replace('"first_bad": ""', '"first_bad": "status 502 with 0 events"')
    )
    problems = bad.problems()
    assert problems is not None
    assert "status 3" in problems
    assert "status 502 with 0 events" in problems
    with pytest.raises(ValueError, match="no BENCH summary"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def _two_round_run() -> dict[str, Any]:
    return {
        "meta": {
            "date": "2026-01-01T00:00:00",
            "machine": "m",
            "kernel": "k",
            "minutes": 1,
            "loadavg_start": ["0.1", "0.1", "0.1"],
            "loadavg_end": ["0.2", "0.2", "0.2"],
            "other_load_cores": 0.0,
            "versions": {"python": "3.11"},
            "plan": {
                "rounds": 2,
                "seconds": 5,
                "warmup_seconds": 3,
                "stream_events": 64,
                "paced_streams": 10,
                "paced_events": 20,
                "paced_us": 10000,
                "streams": 1000,
                "memory_rounds": 3,
            },
        },
        "targets": [
            {"name": "direct", "family": "direct", "tls": False},
            {"name": "fognode", "family": "fognode", "tls": False},
            {"name": "nginx", "family": "nginx", "tls": False},
        ],
        "values": {
            "cpu_us_per_request": {"fognode": [800, 600], "nginx": [20, 30], "direct": [5, 5]},
            "events_per_s": {"fognode": [10_000, None], "nginx": [50_000, 40_000]},
            "p50_ms_c1": {"direct": [0.1, 0.2], "fognode": [0.6, 0.9], "nginx": [0.2, 0.3]},
        },
        "problems": ["round 2, fognode, streams: status 1"],
        "notes": [],
    }


def test_report_takes_ratios_round_by_round() -> None:
    text = report(_two_round_run())
    row = next(line for line in text.splitlines() if line.startswith("| fognode | 700"))
    # ratios per round (40 and 20), then their median: not 700 / 25
    assert "| 30.00 (20.00-40.00) |" in next(
        line for line in text.splitlines() if line.startswith("| fognode | 30.00")
    )
    assert "0.600 (0.500-0.700)" in row  # request path: c=1 p50 minus direct's, per round
    assert "10,000 [1 invalid]" in row
    assert "- round 2, fognode, streams: status 1" in text
    assert "against the baseline" not in text  # no --baseline, no such table


def test_report_sets_this_checkout_against_the_baseline_round_by_round() -> None:
    saved = _two_round_run()
    saved["targets"] = [
        {"name": "direct", "family": "direct", "tls": False},
        {"name": "fognode", "family": "fognode", "tls": False},
        {"name": "fognode base", "family": "fognode-base", "tls": False},
    ]
    saved["values"] = {
        "cpu_us_per_request": {"fognode": [300, 400], "fognode base": [600, 1000]},
        "p50_ms_c1": {"direct": [0.1, 0.2], "fognode": [0.3, 0.6], "fognode base": [0.5, 1.2]},
    }
    text = report(saved)
    row = next(line for line in text.splitlines() if line.startswith("| fognode | 0.45"))
    # CPU 0.5 and 0.4 per round; request path (0.2/0.4 and 0.4/1.0) minus direct's first
    assert row.startswith("| fognode | 0.45 (0.40-0.50) | n/a | 0.45 (0.40-0.50) |")


def test_usage_report_takes_on_off_ratios_round_by_round() -> None:
    saved = {
        "meta": {
            "date": "2026-01-01T00:00:00",
            "machine": "m",
            "minutes": 1,
            "command": "python -m bench.usage",
            "loadavg_start": ["0.1", "0.1", "0.1"],
            "plan": {"rounds": 2, "seconds": 5, "warmup_seconds": 3},
        },
        "targets": ["fognode usage off", "fognode"],
        "values": {
            "cpu_us_plain": {"fognode usage off": [500, 1000], "fognode": [600, 1400]},
            "rps_plain": {"fognode usage off": [100, 200], "fognode": [90, None]},
        },
        "problems": ["round 2, fognode, plain: status 1"],
    }
    text = usage_report(saved)
    row = next(line for line in text.splitlines() if line.startswith("| fognode | 1,000"))
    # per round 1.2 and 1.4, their median 1.3: not 1000 / 750
    assert "| 1.300 (1.200-1.400) |" in row
    assert "| 0.900 [1 invalid] |" in row
    assert "- round 2, fognode, plain: status 1" in text


def test_profile_counts_own_and_cumulative_samples() -> None:
    raw = (
        'process 1:"python";main (cli.py);handler (proxy.py);_write (http_writer.py) 7\n'
        'process 1:"python";main (cli.py);handler (proxy.py) 2\n'
        'process 1:"python";main (cli.py);run (loop.py) 1\n'
    )
    total, own, cumulative = parse_collapsed(raw)
    assert total == 10
    assert own["_write (http_writer.py)"] == 7
    assert own["handler (proxy.py)"] == 2
    assert cumulative["handler (proxy.py)"] == 9
    assert cumulative["main (cli.py)"] == 10


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
