"""Cost per streamed event of the SpeziLLMFog compatibility edits (gateway/pipeline/compat.py).

Every chat stream is relayed through the SSE framer (whole lines, empty
events dropped) and every delta without a role gets one. This measures, in
one process and in interleaved rounds after a warm-up, the time per event of:

* ``join``: the baseline a relay pays anyway for a chunk (one bytes join);
* ``framer``: the framer alone (an upstream that already sends roles);
* ``framer+role``: the framer with the role edit (Ollama >= 0.32.6).

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

from fognode.gateway.pipeline.compat import fill_assistant_role
from fognode.gateway.pipeline.sse import SseFramer


def events(separators: tuple[str, str], n: int) -> list[bytes]:
    base = {
        "id": "chatcmpl-412",
        "object": "chat.completion.chunk",
        "created": 1795459078,
        "model": "llama3.2:1b",
        "system_fingerprint": "fp_ollama",
    }
    out = []
    for i in range(n):
        delta = {"role": "assistant", "content": " word"} if i == 0 else {"content": " word"}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    targets = {"join": join_only, "framer": framer_only, "framer+role": framer_and_role}
    for label, separators in (("Ollama (Go)", (",", ":")), ("llama-cpp-python", (", ", ": "))):
        stream = events(separators, args.events)
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
        role = [r - f for r, f in zip(samples["framer+role"], samples["framer"], strict=True)]
        print(
            f"the role edit alone: {statistics.median(role):.0f} ns per event "
            f"(per-round difference, median; {min(role):.0f}-{max(role):.0f})"
        )


if __name__ == "__main__":
    main()
