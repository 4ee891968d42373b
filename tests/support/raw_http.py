"""Raw HTTP/1.1 over a socket, for requests no well-behaved client would send.

The hostile-request tests, the HTTP fuzzer and the log hygiene test need to
send bytes exactly as written (bare LF, folded headers, two Authorization
headers, absolute-form targets) and to read whatever comes back, including
nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RawResponse:
    status: int | None  # None: the server closed without answering
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        """The OpenAI error object, asserting the body has that shape."""
        body = self.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
        error: dict[str, Any] = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, body
        assert isinstance(error["message"], str) and error["message"], body
        return error


def parse_response(raw: bytes) -> RawResponse:
    """The first response in ``raw`` (a 100 Continue before it is skipped)."""
    rest = raw
    while rest.startswith(b"HTTP/1.1 100") and b"\r\n\r\n" in rest:
        rest = rest.split(b"\r\n\r\n", 1)[1]
    if b"\r\n\r\n" not in rest:
        return RawResponse(None, raw=raw)
    head, body = rest.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return RawResponse(status, headers, body, raw)


def _complete(raw: bytes) -> bool:
    """A whole response (by Content-Length, or chunked to its end) has arrived."""
    response = parse_response(raw)
    if response.status is None:
        return False
    length = response.headers.get("content-length")
    if length is not None:
        return len(response.body) >= int(length)
    return response.headers.get("transfer-encoding") == "chunked" and raw.endswith(b"0\r\n\r\n")


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


async def exchange(
    port: int,
    data: bytes,
    *,
    host: str = "127.0.0.1",
    tls: ssl.SSLContext | None = None,
    limit: float = 30.0,
) -> RawResponse:
    """Send ``data``, read until the server closes or a response with a
    Content-Length is complete (or ``limit`` passes: then whatever arrived),
    and parse the first response."""
    reader, writer = await asyncio.open_connection(
        host, port, ssl=tls, server_hostname="spezillmfog.local" if tls else None
    )
    chunks: list[bytes] = []
    try:
        writer.write(data)
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
                if _complete(b"".join(chunks)):
                    break  # a server may linger to read a body it refused
    except (TimeoutError, ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    return parse_response(b"".join(chunks))


def exchange_blocking(port: int, data: bytes, *, limit: float = 10.0) -> RawResponse:
    """:func:`exchange` for synchronous tests (hypothesis drives those)."""
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if _complete(b"".join(chunks)):
                    break
        except OSError:  # reset, or the limit passed: whatever arrived counts
            pass
    return parse_response(b"".join(chunks))


def request(
    method: str = "GET",
    target: str = "/healthz",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    close: bool = True,
) -> bytes:
    """A well-formed request, the starting point for malformed ones."""
    lines = [f"{method} {target} HTTP/1.1", "Host: spezillmfog.local"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
