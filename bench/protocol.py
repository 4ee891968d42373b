"""Cost of the typed node protocol (gateway/node/protocol.py, workers/messages.py) per message.

Every limited request crosses the supervisor/worker channel: an Acquire and
its answer for the slot, a Settle for its usage record. Each message is
declared once and crosses as a JSON array its codec writes and checks. What
this adds over the hand-made positional arrays the channel carried before
is measured here, in one process and interleaved rounds after a warm-up,
per message as it goes out and comes back in:

* ``json``: the baseline the channel pays anyway, the same values as a
  positional array through ``json.dumps`` and ``json.loads``;
* ``typed``: the message encoded by its codec, the same JSON, then decoded
  and checked back into the dataclass; for a call, its answer too.

Times are this thread's CPU time (not wall time), so other work on the
machine does not count.

    .venv/bin/python -m bench.protocol --rounds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fognode.gateway.node.protocol import Acquire, Admitted, Settle
from fognode.gateway.pipeline.admission import Slots
from fognode.workers.messages import Message, answer_codec, decode, encode
from tests.support.usage import rec

# A finished request's record, with ids as long as the node mints them.
RECORD = replace(
    rec("apikey:alice", at=1_700_000_000.25, prompt=12, completion=34),
    request_id="164f52850ab93de00000000000000001",
    node_id="76cdf5ce",
)


# What a limited request sends across the channel.
CASES: dict[str, tuple[Message, object | None]] = {
    "Acquire and its answer": (Acquire(7, "apikey:alice", Slots.BOTH, "batch"), Admitted()),
    "Settle (a usage record)": (Settle(3, RECORD), None),
}


def dumps(values: Any) -> bytes:
    return json.dumps(values, separators=(",", ":")).encode()


def plain(message: Message, answer: object | None) -> Callable[[], None]:
    """The baseline: the same values as plain arrays, through JSON and back."""
    values = encode(message)
    reply = None if answer is None else answer_codec(type(message)).encode(answer)

    def run() -> None:
        json.loads(dumps(values))
        if reply is not None:
            json.loads(dumps(reply))

    return run


def typed(message: Message, answer: object | None) -> Callable[[], None]:
    """What the channel does now: encode, JSON, decode and check; the answer too."""
    kind = type(message)
    wire = answer_codec(kind) if answer is not None else None
    # What is timed must be the whole trip: the message comes back equal.
    if decode(kind, json.loads(dumps(encode(message)))) != message:
        raise AssertionError(f"{kind.__name__} does not come back as it went")
    if wire is not None and wire.decode(json.loads(dumps(wire.encode(answer)))) != answer:
        raise AssertionError(f"the answer to {kind.__name__} does not come back as it went")

    def run() -> None:
        decode(kind, json.loads(dumps(encode(message))))
        if wire is not None:
            wire.decode(json.loads(dumps(wire.encode(answer))))

    return run


def per_message_ns(run: Callable[[], None], n: int) -> float:
    started = time.thread_time_ns()
    for _ in range(n):
        run()
    return (time.thread_time_ns() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    cases = CASES
    per_request: list[list[float]] = [[] for _ in range(args.rounds)]
    for label, (message, answer) in cases.items():
        targets = {"json": plain(message, answer), "typed": typed(message, answer)}
        for run in targets.values():  # warm-up
            per_message_ns(run, args.messages)
        samples: dict[str, list[float]] = {name: [] for name in targets}
        for i in range(args.rounds):
            for name, run in targets.items():
                samples[name].append(per_message_ns(run, args.messages))
            per_request[i].append(samples["typed"][-1] - samples["json"][-1])
        ratios = [t / j for t, j in zip(samples["typed"], samples["json"], strict=True)]
        print(f"\n{label}: {args.rounds} interleaved rounds of {args.messages}")
        print("| target | median CPU ns/message | min | max |")
        print("|---|---|---|---|")
        for name, values in samples.items():
            print(
                f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} "
                f"| {max(values):.0f} |"
            )
        print(
            f"typed / json, per round: {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f})"
        )
    added = [sum(round_) for round_ in per_request]
    print(
        f"\nadded per limited request (Acquire and answer, Settle): "
        f"{statistics.median(added) / 1000:.1f} µs ({min(added) / 1000:.1f}-"
        f"{max(added) / 1000:.1f}), per-round differences"
    )


if __name__ == "__main__":
    main()
