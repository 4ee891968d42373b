"""The bench's clients: wrk for rates, and two small clients of its own.

* :func:`wrk` runs wrk with ``bench/wrk.lua`` and parses its summary line.
  Every figure taken from wrk comes with its error counts; a run with any
  non-200 answer, socket error or (for streams) a body with the wrong number
  of events is marked invalid by :meth:`WrkResult.problems`.
* :func:`paced_delays` reads paced streams one at a time over one kept-alive
  connection and measures each event's one-way delay: the upstream wrote its
  CLOCK_MONOTONIC time into the event, the client takes the same clock when
  ``recv`` returns it. The request path is not in this figure.
* :func:`hold_streams` opens N streams against the ``slow`` model and keeps
  them open, each one checked (status 200, first event read) before it
  counts as open.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.fastup import MissingTool

SCRIPT = Path(__file__).resolve().parent / "wrk.lua"
CHAT_PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


def chat_body(model: str = "llama3.2:1b", *, stream: bool = False, tag: str = "") -> str:
    """A chat request; a ``tag`` becomes the message, which the upstream
    counts held streams by (every proxy forwards messages untouched)."""
    messages = [{"role": "user", "content": tag}] if tag else MESSAGES
    body: dict[str, object] = {"model": model, "messages": messages}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


@dataclass(frozen=True)
class WrkResult:
    """One wrk run, as its summary line reports it."""

    requests: int
    seconds: float
    errors: dict[str, int]  # connect, read, write, timeout, status (non-2xx/3xx)
    events: int  # SSE events counted in the bodies (only when checked)
    bad: int  # answers that were not 200 or had the wrong number of events
    checked: bool
    first_bad: str  # what the first bad answer looked like
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    def problems(self) -> str | None:
        """Why this run cannot be trusted, or None."""
        wrong = {k: v for k, v in self.errors.items() if v}
        if self.bad:
            wrong[f"bad answers (first: {self.first_bad})"] = self.bad
        if self.requests == 0:
            wrong["requests"] = 0
        if not wrong:
            return None
        return ", ".join(f"{k} {v}" for k, v in wrong.items())


def parse_wrk(output: str) -> WrkResult:
    """The result in wrk's output (the line bench/wrk.lua's done() prints)."""
    match = re.search(r"^BENCH (\{.*\})\s*$", output, re.M)
    if match is None:
        raise ValueError(f"no BENCH summary in wrk's output:\n{output}")
    raw = json.loads(match.group(1))
    return WrkResult(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        errors={k: raw[k] for k in ("connect", "read", "write", "timeout", "status")},
        events=raw["events"],
        bad=raw["bad"],
        checked=raw["checked"],
        first_bad=raw.get("first_bad", ""),
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
    )


def wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    method: str = "POST",
    body: str = "",
    headers: dict[str, str] | None = None,
    expect_events: int = 0,
    timeout_s: int = 10,
) -> WrkResult:
    """One wrk run (one thread: the load generator takes one core of two)."""
    with start_wrk(
        url,
        connections=connections,
        seconds=seconds,
        method=method,
        body=body,
        headers=headers,
        expect_events=expect_events,
        timeout_s=timeout_s,
    ) as proc:
        return finish_wrk(proc, seconds + timeout_s + 30)


def start_wrk(
    url: str,
    *,
    connections: int,
    seconds: int,
    method: str = "POST",
    body: str = "",
    headers: dict[str, str] | None = None,
    expect_events: int = 0,
    timeout_s: int = 10,
) -> subprocess.Popen[str]:
    """wrk, started in the background (see :func:`finish_wrk`)."""
    exe = shutil.which("wrk")
    if exe is None:
        raise MissingTool("wrk is not installed: run bash bench/setup.sh")
    all_headers = {"Content-Type": "application/json"} if body else {}
    all_headers.update(headers or {})
    env = {
        **os.environ,
        "BENCH_METHOD": method,
        "BENCH_BODY": body,
        "BENCH_HEADERS": "\n".join(f"{k}: {v}" for k, v in all_headers.items()),
        "BENCH_EXPECT_EVENTS": str(expect_events),
    }
    return subprocess.Popen(
        [
            exe,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            f"--timeout={timeout_s}s",
            "-s",
            str(SCRIPT),
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish_wrk(proc: subprocess.Popen[str], limit: float) -> WrkResult:
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err or out}")
    return parse_wrk(out)


# --- a minimal HTTP/1.1 reader for the two clients below ---------------------------


class ResponseHead:
    def __init__(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        self.status = int(parts[1])
        self.headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                self.headers[name.strip().lower()] = value.strip()
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()


class Dechunker:
    """Feeds raw body bytes in, gives decoded bytes out; knows when the body ends."""

    def __init__(self, chunked: bool, length: int | None) -> None:
        self.chunked = chunked
        self.left = length  # body bytes still to come, when not chunked
        self.buf = b""
        self.in_chunk = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        if not self.chunked:
            if self.left is not None:
                self.left -= len(data)
                self.done = self.left <= 0
            return data
        self.buf += data
        out = []
        while True:
            if self.in_chunk:
                take = self.buf[: self.in_chunk]
                out.append(take)
                self.buf = self.buf[len(take) :]
                self.in_chunk -= len(take)
                if self.in_chunk:
                    break
                continue
            # expecting "\r\n" after a chunk's data, then a size line
            if self.buf.startswith(b"\r\n"):
                self.buf = self.buf[2:]
            end = self.buf.find(b"\r\n")
            if end < 0:
                break
            size = int(self.buf[:end].split(b";")[0], 16)
            if size == 0:
                # the last chunk, then the blank line that ends the body (no trailers)
                if len(self.buf) >= end + 4:
                    self.buf = b""
                    self.done = True
                break
            self.buf = self.buf[end + 2 :]
            self.in_chunk = size
        return b"".join(out)


EVENT_TIME = re.compile(rb'"content":\s*"(\d+)"')


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects, and how (TLS context and name to check)."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    server_name: str = "localhost"
    headers: tuple[tuple[str, str], ...] = ()

    def request(self, body: str, *, path: str = CHAT_PATH) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers)
        return (
            f"POST {path} HTTP/1.1\r\nHost: {self.server_name}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n{body}"
        ).encode()


def _connect(endpoint: Endpoint) -> socket.socket:
    sock = socket.create_connection((endpoint.host, endpoint.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if endpoint.tls is not None:
        sock = endpoint.tls.wrap_socket(sock, server_hostname=endpoint.server_name)
    return sock


def _events(sock: socket.socket, head_and_rest: bytes) -> Iterator[tuple[int, bytes]]:
    """(receive time in ns, event) for each SSE event of one response on ``sock``."""
    raw = head_and_rest
    received = time.monotonic_ns()
    while b"\r\n\r\n" not in raw:
        more = sock.recv(65536)
        received = time.monotonic_ns()
        if not more:
            raise ConnectionError("closed before the response head")
        raw += more
    head_raw, rest = raw.split(b"\r\n\r\n", 1)
    head = ResponseHead(head_raw)
    if head.status != 200:
        raise RuntimeError(f"status {head.status}: {rest[:300]!r}")
    length = head.headers.get("content-length")
    body = Dechunker(head.chunked, int(length) if length else None)
    pending = b""
    data = body.feed(rest)
    while True:
        pending += data
        while b"\n\n" in pending:
            event, pending = pending.split(b"\n\n", 1)
            yield received, event
        if body.done:
            return
        more = sock.recv(65536)
        received = time.monotonic_ns()
        if not more:
            if body.chunked or body.left is not None:
                raise ConnectionError("closed in the middle of the response")
            return
        data = body.feed(more)


@dataclass(frozen=True)
class PacedResult:
    later_us: list[float]  # one-way delay of every event after the first
    first_us: list[float]  # the first event of each stream (it comes with the head)


def paced_delays(endpoint: Endpoint, *, streams: int, events: int) -> PacedResult:
    """One-way delay of each event of ``streams`` paced streams, one at a time."""
    later: list[float] = []
    first: list[float] = []
    body = chat_body("paced", stream=True)
    with _connect(endpoint) as sock:
        for _ in range(streams):
            sock.sendall(endpoint.request(body))
            seen = 0
            for received, event in _events(sock, b""):
                match = EVENT_TIME.search(event)
                if match is None:
                    continue  # the final chunk and [DONE]
                delay = (received - int(match.group(1))) / 1000
                (first if seen == 0 else later).append(delay)
                seen += 1
            if seen != events:
                raise RuntimeError(f"a stream brought {seen} of its {events} timed events")
    return PacedResult(later, first)


@dataclass
class HeldStreams:
    opened: int  # streams whose status was 200 and whose first event arrived
    waiting: int  # still without a first event when the count stopped growing
    failures: list[str]


@asynccontextmanager
async def hold_streams(
    endpoint: Endpoint,
    count: int,
    *,
    tag: str,
    parallel: int = 64,
    stall: float = 15,
    limit: float = 300,
) -> AsyncIterator[HeldStreams]:
    """Open ``count`` streams against the slow model and hold them open.

    A proxy whose pool caps the open streams leaves the rest waiting: once
    no stream has opened for ``stall`` seconds, those are given up (their
    connections closed, so they hold no memory while it is measured) and
    counted as waiting.
    """
    body = endpoint.request(chat_body("slow", stream=True, tag=tag))
    writers: list[asyncio.StreamWriter] = []
    held = HeldStreams(0, 0, [])
    gate = asyncio.Semaphore(parallel)  # connect in waves, not one SYN flood

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection(
                endpoint.host,
                endpoint.port,
                ssl=endpoint.tls,
                server_hostname=endpoint.server_name if endpoint.tls else None,
            )
            writers.append(writer)
            try:
                writer.write(body)
                head = await reader.readuntil(b"\r\n\r\n")
                status = ResponseHead(head[:-4]).status
                if status != 200:
                    raise RuntimeError(f"status {status}: {(await reader.read(300))!r}")
                # the first event: its "data: " line and the blank line after it
                seen = b""
                while b"data: " not in seen or b"\n\n" not in seen.split(b"data: ", 1)[1]:
                    more = await reader.read(4096)
                    if not more:
                        raise ConnectionError("closed before the first event")
                    seen += more
            except asyncio.CancelledError:
                writer.transport.abort()
                raise
            held.opened += 1

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    loop = asyncio.get_running_loop()
    started = changed = loop.time()
    last = 0
    while not all(task.done() for task in tasks):
        await asyncio.sleep(0.2)
        now = loop.time()
        if held.opened != last:
            last, changed = held.opened, now
        elif now - changed > stall or now - started > limit:
            break
    for task in tasks:
        if not task.done():
            task.cancel()
            held.waiting += 1
    results = await asyncio.gather(*tasks, return_exceptions=True)
    held.failures = [
        f"{type(r).__name__}: {r}"
        for r in results
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
    ]
    try:
        yield held
    finally:
        for writer in writers:
            writer.transport.abort()
        await asyncio.sleep(0)
