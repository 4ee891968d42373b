"""Routing with real processes: a `fognode serve` in front of two stand-in
processes, one of which is killed mid-run (issue 23's 502 run).

With a per-upstream cap of one and two upstreams, killing one used to give
clients 502 "Cannot reach the upstream ... Connection refused" for the rest of
the run: while the live upstream was at its cap, the rule tried the one
already marked down as a "last resort" and passed its refusal on. A request
that has not started streaming must wait for the live upstream instead.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.support.helpers import STREAMED_CHAT, free_port
from tests.support.processes import NodeProcess, Process

MODEL = STREAMED_CHAT["model"]


class Standin(Process):
    """tests/support/ollama_standin.py as a process of its own, so that it can be killed."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "tests.support.ollama_standin", "--port", str(self.port)]
        super().__init__([*argv, *args], log_file=workdir / f"standin-{self.port}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self) -> None:
        if not any("listening on" in line for line in self.lines(time.monotonic() + 30)):
            raise AssertionError(f"the stand-in did not start:\n{self.log()}")


@pytest.fixture
def two_standins(tmp_path: Path) -> Iterator[tuple[Standin, Standin]]:
    # About 0.15 s a request (12 words, 12 ms apart), the model loaded on both.
    pair = tuple(Standin(tmp_path, "--token-delay", "0.012", "--loaded", MODEL) for _ in range(2))
    try:
        for standin in pair:
            standin.wait_listening()
        yield pair[0], pair[1]
    finally:
        for standin in pair:
            standin.stop(signal.SIGKILL)


@dataclass
class Outcome:
    started: float
    status: int
    upstream: str
    content: bool  # a content delta arrived
    done: bool  # the stream ended with [DONE] and no error event
    text: str


async def one_request(http: aiohttp.ClientSession, url: str) -> Outcome:
    started = time.monotonic()
    try:
        async with http.post(f"{url}/v1/chat/completions", json=STREAMED_CHAT) as resp:
            body = await resp.read()
            upstream = resp.headers.get("X-Fognode-Upstream", "")
            status = resp.status
    except aiohttp.ClientError as exc:
        return Outcome(started, 0, "", False, False, repr(exc))
    text = body.decode(errors="replace")
    content = False
    error = False
    for line in text.splitlines():
        if line.startswith("data: {"):
            chunk = json.loads(line[len("data: ") :])
            error = error or "error" in chunk
            content = content or any(
                c.get("delta", {}).get("content") for c in chunk.get("choices", [])
            )
    done = status == 200 and text.rstrip().endswith("data: [DONE]") and not error
    return Outcome(started, status, upstream, content, done, text[:300])


async def test_killing_one_of_two_capped_upstreams_fails_no_request_that_had_not_started(
    tmp_path: Path, two_standins: tuple[Standin, Standin]
) -> None:
    """16 clients stream without pause through a node whose two upstreams take
    one request each; one upstream is killed with SIGKILL after 2 s. Streams
    the killed upstream was writing break (nothing can save those); every
    other request must complete: no 502, no error without a single token."""
    first, second = two_standins
    node = NodeProcess(
        tmp_path,
        {
            "tls": "false",
            "auth": "none",
            "workers": "1",  # what a cap of one leaves anyway (each worker takes a share)
            "upstream_urls": f"{first.url},{second.url}",
            "upstream_max_concurrent": "1",
            "max_concurrent_requests": "16",
            "per_user_concurrent_requests": "16",
            "per_user_queued_requests": "16",
            "log_level": "INFO",
        },
    )
    await node.start()
    outcomes: list[Outcome] = []
    loop = asyncio.get_running_loop()
    killed_at = loop.time() + 2.0
    ends_at = killed_at + 4.0

    async def client(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < ends_at:
            outcomes.append(await one_request(http, node.url))

    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            clients = [asyncio.create_task(client(http)) for _ in range(16)]
            await asyncio.sleep(killed_at - loop.time())
            await second.astop(signal.SIGKILL)
            async with asyncio.timeout(60):
                await asyncio.gather(*clients)
    finally:
        await node.astop()
    kill_time = killed_at
    after = [o for o in outcomes if o.started >= kill_time]
    failed = [o for o in outcomes if not o.done]
    # Failed without a token: the request had not started streaming anywhere.
    unstarted = [o for o in failed if not o.content]
    statuses = Counter(o.status for o in outcomes)
    print(
        f"\n{len(outcomes)} requests ({len(after)} after the kill): statuses {dict(statuses)}; "
        f"{len(failed)} failed, {len(unstarted)} of them before any token; "
        f"after the kill by upstream {dict(Counter(o.upstream for o in after))}"
    )
    assert len(after) >= 10, "the run after the kill is too short to say anything"
    assert not unstarted, [o.text for o in unstarted[:3]]
    # Only the stream the killed upstream was writing at that moment may break.
    assert len(failed) <= 1, [o.text for o in failed[:3]]
    assert all(o.upstream == "1" for o in after if o.done)
