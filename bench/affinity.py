"""Conversation affinity on real llama.cpp servers: time to first token of later turns.

    .venv/bin/python -m bench.affinity [--rounds 3] [--conversations 4] [--turns 6]
                                       [--ram-cache] [--model smollm2:135m]

Two llama.cpp servers (llama.cpp's own, from xllamacpp, run by fognode's
embedded supervisor, one slot and one thread each) serve the same model; two fognode processes
front both as two OpenAI-compatible upstreams, one with conversation
affinity (the default) and one with it off (least busy only, equals taking
turns: what other gateways do). Three ways to the model are compared:

* ``affinity``: through fognode, affinity on;
* ``least-busy``: through fognode, ``FOGNODE_UPSTREAM_AFFINITY=false``;
* ``direct``: straight to the first server, no gateway.

Each way gets the same work: several conversations of growing length
(a system prompt, then per turn a user message of about 90 tokens and the
model's answer, at temperature 0), interleaved: turn 1 of every
conversation in a shuffled order, then turn 2 of every one, and so on.
Requests go one at a time, as on a LAN node where people read and type
between turns: the servers are idle when a turn arrives, so least-busy has
nothing to choose by. Time to first token is measured at the client from
sending the request to the first content delta.

Each llama.cpp server keeps the prompt it processed last (its slot's KV
cache) and skips the part of the next prompt that matches it. With
``--ram-cache`` the servers also keep earlier prompts in RAM (llama.cpp's
prompt cache, ``--cache-ram``: FOGNODE_EMBEDDED_PROMPT_CACHE_MIB), so one
server can hold several conversations.

Rounds are interleaved (the order of the three ways rotates each round),
after a warm-up; every conversation of a round starts with a system prompt
of its own (a session number first), so no way ever finds another's prompt
in a cache. The table gives medians over the later turns (3 and on), per
round and over rounds, with the spread, and the per-round ratio to
affinity. Every request is kept in a JSON file for a closer look.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import machine, start_fognode, stop, wait_ready
from fognode.embedded.model import chat_template, model_file
from fognode.embedded.options import EmbeddedOptions
from fognode.embedded.supervisor import LlamaServer
from tests.support.helpers import free_port

WAYS = ("affinity", "least-busy", "direct")
LATER = 3  # "later turns": from this turn on, a conversation has history to reuse

SENTENCES = (
    "The harbour wall was rebuilt after the winter storms of the last decade.",
    "Fishermen leave before dawn and come back when the tide turns in the afternoon.",
    "A small museum near the station keeps maps, nets and photographs of old boats.",
    "The bakery on the corner sells rye bread, cinnamon buns and coffee until noon.",
    "Most visitors arrive by train and walk along the river to the old town.",
    "In spring the hills behind the village are covered with yellow flowers.",
    "The school has a garden where children grow beans, potatoes and strawberries.",
    "Every Saturday there is a market with cheese, honey, apples and wool.",
    "The lighthouse has been automatic since the keeper retired many years ago.",
    "A ferry crosses to the island twice a day when the weather allows it.",
    "The library opens late on Thursdays and lends bicycles as well as books.",
    "Rain comes mostly from the west, and the wind is strongest in November.",
)


@dataclass
class Sample:
    way: str
    round: int
    conversation: int
    turn: int
    ttft_ms: float
    upstream: str  # the server that answered: "1"/"2" through fognode, "1" direct
    reason: str  # X-Fognode-Upstream-Reason ("" direct)
    prompt_chars: int


def user_message(rng: random.Random, turn: int) -> str:
    note = " ".join(rng.sample(SENTENCES, 4))
    return f"Note {turn}: {note} Question: in one short sentence, what is note {turn} about?"


class Conversation:
    def __init__(self, notes: str, session_of: str) -> None:
        self.rng = random.Random(notes)
        session = uuid.UUID(int=random.Random(session_of).getrandbits(128)).hex[:12]
        system = f"Session {session}. You are a concise assistant. Answer in one short sentence."
        self.messages: list[dict[str, str]] = [{"role": "system", "content": system}]

    def ask(self, turn: int) -> list[dict[str, str]]:
        self.messages.append({"role": "user", "content": user_message(self.rng, turn)})
        return list(self.messages)

    def answered(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})


async def chat(
    http: aiohttp.ClientSession, base: str, model: str, messages: list[dict[str, str]], tokens: int
) -> tuple[float, str, str, str]:
    """Stream one answer: ms to the first content delta, the text, upstream, reason."""
    body = {
        "model": model,
        "messages": messages,
        "stream": True,
        "max_tokens": tokens,
        "temperature": 0,
        "seed": 1,
    }
    started = time.perf_counter()
    first = 0.0
    parts: list[str] = []
    async with http.post(f"{base}/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{base} answered {resp.status}: {(await resp.text())[:300]}")
        upstream = resp.headers.get("X-Fognode-Upstream", "1")
        reason = resp.headers.get("X-Fognode-Upstream-Reason", "")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"in-band error from {base}: {chunk['error']}")
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content") or ""
                if text and not first:
                    first = time.perf_counter() - started
                parts.append(text)
    if not first:
        raise RuntimeError(f"{base} sent no content")
    return first * 1000, "".join(parts), upstream, reason


async def run_way(
    http: aiohttp.ClientSession,
    way: str,
    base: str,
    model: str,
    round_: int,
    args: argparse.Namespace,
) -> list[Sample]:
    """One way's share of a round: the conversations, interleaved turn by turn."""
    # The same conversations' shape (notes, order) for every way of a round,
    # a session of their own (so no way finds another's prompt in a cache).
    conversations = [
        Conversation(f"{round_}/{c}", f"{round_}/{c}/{way}") for c in range(args.conversations)
    ]
    order = random.Random(f"order/{round_}")
    samples = []
    for turn in range(1, args.turns + 1):
        for c in order.sample(range(args.conversations), args.conversations):
            conversation = conversations[c]
            messages = conversation.ask(turn)
            ttft, text, upstream, reason = await chat(http, base, model, messages, args.tokens)
            conversation.answered(text)
            chars = sum(len(m["content"]) for m in messages)
            samples.append(Sample(way, round_, c, turn, ttft, upstream, reason, chars))
    return samples


def spread(values: list[float], digits: int = 0) -> str:
    if not values:
        return "n/a"
    return (
        f"{statistics.median(values):.{digits}f} "
        f"({min(values):.{digits}f}-{max(values):.{digits}f})"
    )


def report(samples: list[Sample], args: argparse.Namespace, header: str) -> None:
    later = [s for s in samples if s.turn >= LATER]
    rounds = sorted({s.round for s in samples})
    per_round: dict[str, dict[int, float]] = defaultdict(dict)
    for way in WAYS:
        for r in rounds:
            values = [s.ttft_ms for s in later if s.way == way and s.round == r]
            if values:
                per_round[way][r] = statistics.median(values)
    print(header)
    print(
        f"\nTime to first token of turns {LATER}-{args.turns}, ms: median over rounds of "
        "each round's median (min-max of the round medians); ratio to affinity per round, "
        "then the median (min-max). Same upstream: turns 2 and on that went to the "
        "server that answered the conversation's previous turn.\n"
    )
    print("| way | TTFT later turns, ms | x affinity | same upstream as previous turn |")
    print("|---|---|---|---|")
    for way in WAYS:
        medians = list(per_round[way].values())
        ratios = [per_round[way][r] / per_round["affinity"][r] for r in per_round[way]]
        print(f"| {way} | {spread(medians)} | {spread(ratios, 2)} | {stickiness(samples, way)} |")
    print("\nMedian TTFT by turn, ms, all rounds pooled (min-max):\n")
    print("| turn | prompt chars | " + " | ".join(WAYS) + " |")
    print("|---" * (len(WAYS) + 2) + "|")
    for turn in range(1, args.turns + 1):
        at = [s for s in samples if s.turn == turn]
        chars = statistics.median(s.prompt_chars for s in at)
        cells = [spread([s.ttft_ms for s in at if s.way == way]) for way in WAYS]
        print(f"| {turn} | {chars:.0f} | " + " | ".join(cells) + " |")
    reasons = defaultdict(int)
    for s in samples:
        if s.way == "affinity":
            reasons[s.reason] += 1
    print(
        "\nReasons fognode gave with affinity on (X-Fognode-Upstream-Reason): "
        + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    )


def stickiness(samples: list[Sample], way: str) -> str:
    last: dict[tuple[int, int], str] = {}
    same = total = 0
    for s in samples:
        if s.way != way:
            continue
        previous = last.get((s.round, s.conversation))
        if previous is not None:
            total += 1
            same += previous == s.upstream
        last[(s.round, s.conversation)] = s.upstream
    return f"{same}/{total}" if total else "n/a"


async def fognode(port: int, upstreams: list[str], affinity: bool, data: Path) -> Any:
    """fognode in front of both servers, as two OpenAI-compatible upstreams."""
    proc = await start_fognode(
        port,
        upstreams[0],  # FOGNODE_UPSTREAM_URLS wins over it
        "--no-tls",
        "--auth",
        "none",
        FOGNODE_UPSTREAM_URLS=",".join(upstreams),
        FOGNODE_UPSTREAM_KIND="openai",
        FOGNODE_UPSTREAM_AFFINITY="true" if affinity else "false",
        FOGNODE_MDNS="false",
        XDG_DATA_HOME=str(data),
    )
    await wait_ready(f"http://127.0.0.1:{port}/readyz", limit=60)
    return proc


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=16, help="answer length (max_tokens)")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--ram-cache", action="store_true", help="servers keep prompts in RAM")
    parser.add_argument("--out", type=Path, default=Path.home() / ".cache/fognode/bench/runs")
    args = parser.parse_args()

    load_before = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fognode-affinity-") as tmp:
        options = EmbeddedOptions(
            models_dir=Path(tmp) / "models",
            model=args.model,
            context_size=args.context,
            slots=1,
            threads=1,
            prompt_cache_mib=1024 if args.ram_cache else 0,
        )
        servers = [LlamaServer(options, port=free_port()) for _ in range(2)]
        gguf = await asyncio.to_thread(model_file, options)
        template = await asyncio.to_thread(chat_template, options)
        procs = []
        try:
            for server in servers:
                await server.start(gguf, template)
            await asyncio.wait_for(asyncio.gather(*(s.wait_ready() for s in servers)), 300)
            urls = [s.url for s in servers]
            ports = free_port(), free_port()
            procs.append(await fognode(ports[0], urls, True, Path(tmp)))
            procs.append(await fognode(ports[1], urls, False, Path(tmp)))
            bases = {
                "affinity": f"http://127.0.0.1:{ports[0]}",
                "least-busy": f"http://127.0.0.1:{ports[1]}",
                "direct": urls[0],
            }
            alias = options.model_alias
            samples: list[Sample] = []
            timeout = aiohttp.ClientTimeout(total=600)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                # Warm-up: every server, every path, a short chat each.
                warm = [{"role": "user", "content": "Say hello."}]
                for base in (*urls, bases["affinity"], bases["affinity"], bases["least-busy"]):
                    await chat(http, base, alias, warm, 4)
                for round_ in range(args.rounds):
                    shift = round_ % len(WAYS)
                    for way in WAYS[shift:] + WAYS[:shift]:
                        began = time.monotonic()
                        samples += await run_way(http, way, bases[way], alias, round_, args)
                        print(
                            f"round {round_ + 1}/{args.rounds} {way}: "
                            f"{time.monotonic() - began:.0f}s",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            await stop(*procs)
            await asyncio.gather(*(s.stop() for s in servers))

    load_after = os.getloadavg()
    caches = "a RAM prompt cache each" if args.ram_cache else "one cached prompt each"
    header = (
        f"### {args.conversations} conversations x {args.turns} turns, two llama.cpp servers "
        f"with {caches}\n\n"
        f"- {machine()}; model {args.model}, 1 thread per server, context {args.context}, "
        f"answers of {args.tokens} tokens at temperature 0; {args.rounds} rounds after a "
        f"warm-up, {time.monotonic() - started:.0f} s.\n"
        f"- Load average {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end."
    )
    report(samples, args, header)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"affinity-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "samples": [asdict(s) for s in samples],
            },
            indent=1,
        )
    )
    print(f"\nEvery request: {path}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
