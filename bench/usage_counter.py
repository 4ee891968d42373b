"""Per-chunk cost of the usage token counter, against baselines in the same run.

The relay will call ``TokenCounter.feed`` and ``delivered`` once per chunk it
relays. This measures that cost on realistic streams, interleaved with two
baselines run over the same chunks:

* ``loop``: the bare per-chunk loop (a call that returns the chunk), the
  floor any per-chunk hook costs;
* ``json.loads``: the obvious alternative design, decoding every event.

Cases: an OpenAI chat stream (one SSE event per chunk) with the usage chunk
kept (the client asked) and stripped (the gateway asked), the same stream
cut into 100-byte pieces (events split across chunks), and an Ollama
``/api/chat`` NDJSON stream. Each repetition runs every variant once, in
rotating order; the first repetitions warm up and are discarded. Medians
with the spread (min..max) over repetitions, in nanoseconds per chunk.

On a machine shared with other work the times scatter; ``--instructions``
counts instructions per chunk instead, under valgrind's callgrind (each
case run over two stream lengths in its own process, the difference divided
by the extra chunks, so start-up and imports cancel out): repeatable
whatever else the machine is doing.

    .venv/bin/python -m bench.usage_counter [--repetitions 30] [--words 300]
    .venv/bin/python -m bench.usage_counter --instructions
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from fognode.usage.counter import BodyKind, TokenCounter


def chat_stream(words: int) -> list[bytes]:
    base = {"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1773489600}
    base |= {"model": "llama3.2:1b", "system_fingerprint": "fp_ollama"}
    chunks = []
    for i in range(words):
        delta = {"role": "assistant", "content": f" word{i % 97}"}
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        chunks.append(b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n")
    usage = {"prompt_tokens": 26, "completion_tokens": words, "total_tokens": 26 + words}
    chunks.append(
        b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n"
    )
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def ndjson_stream(words: int) -> list[bytes]:
    chunks = []
    for i in range(words):
        line = {
            "model": "llama3.2:1b",
            "created_at": "2026-03-14T12:00:00.000000Z",
            "message": {"role": "assistant", "content": f" word{i % 97}"},
            "done": False,
        }
        chunks.append(json.dumps(line).encode() + b"\n")
    done = {"model": "llama3.2:1b", "done": True, "prompt_eval_count": 26, "eval_count": words}
    chunks.append(json.dumps(done).encode() + b"\n")
    return chunks


def recut(chunks: list[bytes], size: int) -> list[bytes]:
    whole = b"".join(chunks)
    return [whole[i : i + size] for i in range(0, len(whole), size)]


def run_counter(kind: BodyKind, strip: bool) -> Callable[[list[bytes]], int]:
    def run(chunks: list[bytes]) -> int:
        counter = TokenCounter(kind, strip_usage_chunk=strip)
        sent = 0
        for chunk in chunks:
            sent += len(counter.feed(chunk))
            counter.delivered()
        counter.finish()
        assert counter.tokens(completed=True).exact
        return sent

    return run


def run_loop(chunks: list[bytes]) -> int:
    def passthrough(chunk: bytes) -> bytes:
        return chunk

    sent = 0
    for chunk in chunks:
        sent += len(passthrough(chunk))
    return sent


def run_json_sse(chunks: list[bytes]) -> int:
    """Decode every event: what a counter without the byte-level fast path does."""
    sent = 0
    for chunk in chunks:
        for event in chunk.split(b"\n\n"):
            if event.startswith(b"data: {"):
                json.loads(event[6:])
        sent += len(chunk)
    return sent


def measure(fn: Callable[[list[bytes]], int], chunks: list[bytes]) -> float:
    started = time.perf_counter_ns()
    fn(chunks)
    return (time.perf_counter_ns() - started) / len(chunks)


Case = tuple[str, Callable[[list[bytes]], int], Callable[[int], list[bytes]]]

CASES: list[Case] = [
    ("loop (baseline)", run_loop, chat_stream),
    ("json.loads per event (baseline)", run_json_sse, chat_stream),
    ("SSE chat, usage kept", run_counter(BodyKind.SSE, False), chat_stream),
    ("SSE chat, usage stripped", run_counter(BodyKind.SSE, True), chat_stream),
    (
        "SSE chat in 100-byte pieces, stripped",
        run_counter(BodyKind.SSE, True),
        lambda words: recut(chat_stream(words), 100),
    ),
    ("NDJSON /api/chat", run_counter(BodyKind.NDJSON, False), ndjson_stream),
]


def cases(words: int) -> list[tuple[str, Callable[[list[bytes]], int], list[bytes]]]:
    return [(name, fn, make(words)) for name, fn, make in CASES]


def timed(args: argparse.Namespace) -> None:
    from bench.common import machine

    table = cases(args.words)
    samples: dict[str, list[float]] = {name: [] for name, _, _ in table}
    for rep in range(args.warmup + args.repetitions):
        shift = rep % len(table)
        for name, fn, chunks in table[shift:] + table[:shift]:
            value = measure(fn, chunks)
            if rep >= args.warmup:
                samples[name].append(value)

    print(f"# usage counter, ns per chunk ({machine()})")
    print(
        f"# {args.repetitions} repetitions after {args.warmup} warm-up, "
        f"{args.words} content chunks per stream, interleaved"
    )
    loop = statistics.median(samples["loop (baseline)"])
    decode = statistics.median(samples["json.loads per event (baseline)"])
    print(f"{'case':40} {'median':>8} {'min..max':>16} {'- loop':>8} {'/ json':>7}")
    for name, values in samples.items():
        median = statistics.median(values)
        spread = f"{min(values):.0f}..{max(values):.0f}"
        print(f"{name:40} {median:8.0f} {spread:>16} {median - loop:8.0f} {median / decode:7.2f}")


def instructions(args: argparse.Namespace) -> None:
    """Instructions per chunk under callgrind: the stream run once and three
    times in one process each; the difference over twice its chunks."""
    print(f"# usage counter, instructions per chunk (callgrind, {args.words} content chunks)")
    print(f"{'case':40} {'instr/chunk':>12} {'- loop':>8} {'/ json':>7}")
    results: dict[str, float] = {}
    for index, (name, _, make) in enumerate(CASES):
        counts = []
        for repeat in (1, 3):
            done = subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--callgrind-out-file=/dev/null",
                    sys.executable,
                    "-m",
                    "bench.usage_counter",
                    "--run-case",
                    str(index),
                    "--words",
                    str(args.words),
                    "--repeat",
                    str(repeat),
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONHASHSEED": "0"},  # same dict layouts every run
            )
            found = re.search(r"Collected : (\d+)", done.stderr)
            if found is None:
                raise RuntimeError(f"callgrind printed no count:\n{done.stderr[-500:]}")
            counts.append(int(found.group(1)))
        results[name] = (counts[1] - counts[0]) / (2 * len(make(args.words)))
        loop = results["loop (baseline)"]
        decode = results.get("json.loads per event (baseline)")
        ratio = f"{results[name] / decode:7.2f}" if decode else ""
        print(f"{name:40} {results[name]:12.0f} {results[name] - loop:8.0f} {ratio}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repetitions", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--words", type=int, default=300)
    parser.add_argument("--instructions", action="store_true", help="count under callgrind")
    parser.add_argument("--run-case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_case is not None:
        _, fn, make = CASES[args.run_case]
        chunks = make(args.words)
        for _ in range(args.repeat):
            fn(chunks)
    elif args.instructions:
        instructions(args)
    else:
        timed(args)


if __name__ == "__main__":
    main()
