"""The benchmark's parsers and report handle sample output (the benchmark itself
is not part of the suite; tests/system/test_bench_parts.py checks its compiled
upstream). No figure is asserted here."""

from __future__ import annotations

from typing import Any

import pytest

from bench.loadgen import (
    parse_wrk,
)
from bench.peers import report
from bench.profile import parse_collapsed
from bench.protocol import CASES, per_message_ns, plain, typed
from bench.sharing import report as sharing_report
from bench.usage import report as usage_report

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


def test_sharing_report_gives_spreads_and_the_ratio_of_each_rounds_pair() -> None:
    def run(round_: int, scene: str, target: str, wait: float, **more: float) -> dict[str, Any]:
        return {"round": round_, "scene": scene, "target": target, "wait": wait, **more}

    saved = {
        "machine": "2 cores",
        "args": {"request_seconds": 1.0, "max_wait": 5.0, "rounds": 2},
        "targets": ["this", "base"],
        "runs": [
            run(0, "behind ten", "this", 1.0, after_batch=0),
            run(0, "behind ten", "base", 5.0, after_batch=10),
            run(1, "behind ten", "base", 8.0, after_batch=10),
            run(1, "behind ten", "this", 2.0, after_batch=0),
            run(0, "steady load", "this", 4.0, interactive_median=1.5),
            run(1, "steady load", "this", 6.0, interactive_median=2.5),
        ],
    }
    text = sharing_report(saved)
    assert "| this | 1.50 (1.00-2.00) | 0 (0-0) | 5.00 (4.00-6.00) | 2.00 (1.50-2.50) |" in text
    assert "| base | 6.50 (5.00-8.00) | 10 (10-10) | - | - |" in text
    # Round by round (0.2 and 0.25), not the ratio of the medians (0.23).
    assert "round by round: 0.225 (0.200-0.250)." in text


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


def test_the_protocol_bench_times_whole_trips_of_the_messages_a_request_sends() -> None:
    """typed() refuses a message that would not come back equal, so what it
    times is the codec's whole trip; both targets cost something."""
    assert {type(m).__name__ for m, _ in CASES.values()} == {"Acquire", "Settle"}
    for message, answer in CASES.values():
        assert per_message_ns(plain(message, answer), 10) > 0
        assert per_message_ns(typed(message, answer), 10) > 0
