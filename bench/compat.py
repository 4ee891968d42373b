"""Cost of the compatibility edits (gateway/pipeline/compat.py), per event and per answer.

Every chat stream is relayed through the SSE framer (whole lines, empty
events dropped) and every delta without a role gets one; every chunk is
checked for what OpenAI's document requires (the strict-decoding edit,
which does the role too). This measures, in one process and in interleaved
rounds after a warm-up, the time per event of:

* ``join``: the baseline a relay pays anyway for a chunk (one bytes join);
* ``framer``: the framer alone (no edit at all);
* ``framer+role``: the framer with the role edit alone (before the strict edit);
* ``framer+strict``: the framer with the strict-decoding edit (what relays now);
* ``framer+strict(parse)``: the same edit if it parsed every chunk (its template off).

and, per non-streamed chat answer, the parse answers.py does anyway against
the parse plus the fill and the answer written anew (``--answers``).

Times are this thread's CPU time (not wall time), so other work on the
machine does not count. Events are fed one per chunk, as Ollama writes them, in the compact form of
Ollama's Go encoder and in the spaced form of llama-cpp-python.

    .venv/bin/python -m bench.compat --rounds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from fognode.gateway.pipeline.compat import (
    ChunkEditor,
    dump_answer,
    fill_assistant_role,
    fix_chat_answer,
)
from fognode.gateway.pipeline.sse import SseFramer


def events(separators: tuple[str, str], n: int, role_every: bool = False) -> list[bytes]:
    base = {
        "id": "chatcmpl-412",
        "object": "chat.completion.chunk",
        "created": 1795459078,
        "model": "llama3.2:1b",
        "system_fingerprint": "fp_ollama",
    }
    out = []
    for i in range(n):
        with_role = i == 0 or role_every
        delta = {"role": "assistant", "content": " word"} if with_role else {"content": " word"}
        chunk = dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": None}])
        out.append(b"data: " + json.dumps(chunk, separators=separators).encode() + b"\n\n")
    return out


def per_event_ns(run: Callable[[list[bytes]], None], stream: list[bytes]) -> float:
    """CPU time of this thread per event: on a shared machine, wall time would
    also count the time other processes had the core."""
    started = time.thread_time_ns()
    run(stream)
    return (time.thread_time_ns() - started) / len(stream)


def join_only(stream: list[bytes]) -> None:
    for chunk in stream:
        b"".join((b"", chunk))


def framer_only(stream: list[bytes]) -> None:
    framer = SseFramer()
    for chunk in stream:
        framer.feed(chunk)


def framer_and_role(stream: list[bytes]) -> None:
    framer = SseFramer(fill_assistant_role)
    for chunk in stream:
        framer.feed(chunk)


def framer_and_strict(stream: list[bytes]) -> None:
    framer = SseFramer(ChunkEditor("llama3.2:1b"))
    for chunk in stream:
        framer.feed(chunk)


def framer_and_strict_parsing(stream: list[bytes]) -> None:
    editor = ChunkEditor("llama3.2:1b")
    framer = SseFramer(editor._parse)  # every chunk parsed: the template never used
    for chunk in stream:
        framer.feed(chunk)


def answer(words: int) -> bytes:
    """A non-streamed chat answer as Ollama writes it (no logprobs, no refusal)."""
    return json.dumps(
        {
            "id": "chatcmpl-412",
            "object": "chat.completion",
            "created": 1795459078,
            "model": "llama3.2:1b",
            "system_fingerprint": "fp_ollama",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " word" * words},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": words, "total_tokens": 12 + words},
        },
        separators=(",", ":"),
    ).encode()


def per_answer_ns(run: Callable[[bytes], None], body: bytes, n: int) -> float:
    started = time.thread_time_ns()
    for _ in range(n):
        run(body)
    return (time.thread_time_ns() - started) / n


def parse_only(body: bytes) -> None:
    json.loads(body)


def parse_fill_dump(body: bytes) -> None:
    obj = json.loads(body)
    if fix_chat_answer(obj):
        dump_answer(obj)


def answers(rounds: int, n: int) -> None:
    for words in (20, 300):
        body = answer(words)
        targets = {"parse (answers.py)": parse_only, "parse+fill+write": parse_fill_dump}
        for run in targets.values():
            per_answer_ns(run, body, n)
        samples: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(rounds):
            for name, run in targets.items():
                samples[name].append(per_answer_ns(run, body, n))
        extra = [
            f - p
            for f, p in zip(samples["parse+fill+write"], samples["parse (answers.py)"], strict=True)
        ]
        print(f"\nchat answer of {len(body)} bytes, {rounds} interleaved rounds of {n}")
        for name, values in samples.items():
            spread = f"{min(values):.0f}-{max(values):.0f}"
            print(f"| {name} | {statistics.median(values):.0f} | {spread} |")
        print(
            f"the fill and the answer written anew: {statistics.median(extra):.0f} ns per answer "
            f"(per-round difference, median; {min(extra):.0f}-{max(extra):.0f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--answers", type=int, default=2_000, help="answers per round")
    args = parser.parse_args()
    targets = {
        "join": join_only,
        "framer": framer_only,
        "framer+role": framer_and_role,
        "framer+strict": framer_and_strict,
        "framer+strict(parse)": framer_and_strict_parsing,
    }
    for label, separators, role_every in (
        ("Ollama >= 0.32.6 (Go)", (",", ":"), False),
        ("Ollama < 0.32.6 (Go, role in every delta)", (",", ":"), True),
        ("llama-cpp-python", (", ", ": "), False),
    ):
        stream = events(separators, args.events, role_every)
        for run in targets.values():  # warm-up
            run(stream)
        samples: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, run in targets.items():
                samples[name].append(per_event_ns(run, stream))
        print(f"\n{label}: {len(stream[1])} bytes per event, {args.rounds} interleaved rounds")
        print(
            "| target | median CPU ns/event | min | max | x framer, per round: median (min-max) |"
        )
        print("|---|---|---|---|---|")
        for name, values in samples.items():
            ratios = [v / f for v, f in zip(values, samples["framer"], strict=True)]
            print(
                f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} "
                f"| {max(values):.0f} | {statistics.median(ratios):.2f} "
                f"({min(ratios):.2f}-{max(ratios):.2f}) |"
            )
        for name in ("framer+role", "framer+strict"):
            extra = [e - f for e, f in zip(samples[name], samples["framer"], strict=True)]
            print(
                f"{name.removeprefix('framer+')} edit alone: {statistics.median(extra):.0f} ns "
                f"per event (per-round difference, median; {min(extra):.0f}-{max(extra):.0f})"
            )
    answers(args.rounds, args.answers)


if __name__ == "__main__":
    main()
