"""Many SpeziLLMFog apps at once, as a program to run on a test's phone namespace.

Each phone is the app-faithful client (tests/support/spezillmfog_client.py): it
browses for 100 ms, picks a node at random, resolves it, and streams one
chat; phones arrive one after another at a steady rate, each asking for a
model drawn from the mix (shuffled with a seed, so a run is repeatable).
Prints one JSON list: what each phone saw (which node, the app's error case,
its time to the first token, the answer).

    python -m tests.support.fog_phones --ca ca.crt --token KEY --interface 10.0.0.1 \\
        --mix llama3:8b=42,qwen2:1b=6,gemma2:2b=12 --rate 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

from tests.support.spezillmfog_client import AppConfig, run_app


def mix_of(text: str, seed: int) -> list[str]:
    models = [m for part in text.split(",") for m in [part.rsplit("=", 1)]]
    drawn = [name for name, count in models for _ in range(int(count))]
    random.Random(seed).shuffle(drawn)
    return drawn


async def phones(args: argparse.Namespace) -> list[dict[str, Any]]:
    models = mix_of(args.mix, args.seed)
    began = time.monotonic()

    async def phone(index: int, model: str) -> dict[str, Any]:
        await asyncio.sleep(index / args.rate)
        cfg = AppConfig(
            model=model,
            token=lambda: str(args.token),
            ca_file=args.ca,
            idle_timeout=args.idle_timeout,
            backoff=args.backoff,
            interfaces=[args.interface] if args.interface else None,
        )
        started = time.monotonic() - began
        outcome = await run_app(cfg, f"Question {index}", args.address)
        outcome.update(phone=index, model=model, started=round(started, 3))
        outcome["text"] = "".join(outcome.pop("pieces", []))
        if not args.log:
            outcome.pop("log", None)
        return outcome

    return list(await asyncio.gather(*(phone(i, m) for i, m in enumerate(models))))


def main() -> None:
    parser = argparse.ArgumentParser(description="many SpeziLLMFog-faithful phones at once")
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--token", required=True, help="the bearer token every phone sends")
    parser.add_argument("--interface", help="the address zeroconf listens on")
    parser.add_argument("--address", help="skip discovery: every phone uses this node")
    parser.add_argument("--mix", required=True, help="model=count,... (what the phones ask for)")
    parser.add_argument("--rate", type=float, default=4.0, help="phones arriving per second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--idle-timeout", type=float, default=60.0)
    parser.add_argument("--backoff", type=float, default=1.0)
    parser.add_argument("--log", action="store_true", help="keep each phone's step log")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(phones(args))))


if __name__ == "__main__":
    main()
