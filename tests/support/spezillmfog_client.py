"""A Python client that behaves as the SpeziLLMFog iOS app does.

Written from the app's source (SpeziLLM, Sources/SpeziLLMFog) and the client
contract in ../shared/DESIGN.md, step by step; each step names the Swift it
stands for. It is what fognode must serve unchanged, so it does not use any of
fognode's own client code: its mDNS is python-zeroconf's browser (the app
uses Apple's mDNSResponder, which likewise asks with the QU bit first), its
HTTP is written here on asyncio streams so that every byte is as the app's
URLSession would send it (no SNI, ``Host: spezillmfog.local``), and its SSE
decoder is swift-openapi-runtime's state machine.

Timeouts and backoff are parameters so tests can scale them down; the app's
own values are the defaults.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zeroconf._services.browser as zeroconf_browser
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

# python-zeroconf waits 20-120 ms before a browser's first query (RFC 6762
# 5.2, for many queries at once); mDNSResponder asks at once, with the QU bit.
# The app browses for only 100 ms, so this client asks at once too.
zeroconf_browser._FIRST_QUERY_DELAY_RANDOM_INTERVAL = (0, 1)

# LLMFogError.swift
MODEL_NOT_FOUND = re.compile(r"model '([\w:]+)' not found, try pulling it first")


class AppError(Exception):
    """LLMFogError: which case the app would show, and what it carries.

    ``retryable``: RetryMiddleware would send the request again (a transport
    error before the response, or a 429/5xx status); an error while the body
    streams is past the middleware and ends the generation.
    """

    def __init__(
        self, case: str, detail: str = "", *, status: int | None = None, retryable: bool = False
    ) -> None:
        super().__init__(f"{case}: {detail}" if detail else case)
        self.case = case
        self.detail = detail
        self.status = status
        self.retryable = retryable
        self.attempts = 1


@dataclass
class AppConfig:
    """LLMFogPlatformConfiguration, with the model and the test's knobs."""

    model: str
    token: Callable[[], str]  # BearerAuthMiddleware reads it anew for every request
    ca_file: Path | None = None  # .https(caCertificate:) or None for .http
    host: str = "spezillmfog.local"
    browse_seconds: float = 0.1  # mDnsBrowsingTimeout
    idle_timeout: float = 60.0  # URLSession's timeoutIntervalForRequest (the default)
    attempts: int = 3  # RetryPolicy.attempts(3): three attempts in all
    backoff: float = 1.0  # DelayPolicy.exponential(base: 1): 1 s, then 2 s
    interfaces: list[str] | None = None  # where python-zeroconf listens (the test's veth)
    log: list[str] = field(default_factory=list)

    @property
    def service_type(self) -> str:
        # LLMFogPlatformConfiguration.ConnectionType.mDnsServiceType
        return "_https._tcp" if self.ca_file else "_http._tcp"

    @property
    def port(self) -> int:
        # LLMFogSession+Setup.swift: the SRV port is ignored
        return 443 if self.ca_file else 80


# --- discovery: LLMFogSession.discoverFogService / resolveFogService ------------


async def discover(cfg: AppConfig) -> tuple[str, str]:
    """NWBrowser(.bonjour(type:, domain: host + ".")) for mDnsBrowsingTimeout, then
    browseResults.randomElement(). Returns (service type, service name)."""
    domain = cfg.host + "."
    service_type = f"{cfg.service_type}.{domain}"
    azc = AsyncZeroconf(interfaces=cfg.interfaces or ["0.0.0.0"], ip_version=IPVersion.V4Only)
    found: set[str] = set()

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            found.discard(name)
        else:
            found.add(name)

    await azc.zeroconf.async_wait_for_start()  # the interface is up before the clock starts
    browser = AsyncServiceBrowser(azc.zeroconf, [service_type], handlers=[on_change])
    try:
        await asyncio.sleep(cfg.browse_seconds)
    finally:
        await browser.async_cancel()
        await azc.async_close()
    cfg.log.append(f"browsed {service_type} for {cfg.browse_seconds}s: {sorted(found)}")
    if not found:
        raise AppError("mDnsServicesNotFound", service_type)
    return service_type, random.choice(sorted(found))


async def resolve(cfg: AppConfig, service: tuple[str, str]) -> str:
    """NWConnection(to: endpoint, using: .tcp): resolve SRV + A, connect, and take
    the peer's address (currentPath.remoteEndpoint)."""
    service_type, name = service
    azc = AsyncZeroconf(interfaces=cfg.interfaces or ["0.0.0.0"], ip_version=IPVersion.V4Only)
    try:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(azc.zeroconf, 3000) or info.port is None:
            raise AppError("mDnsServiceDiscoveryNetworkError", f"cannot resolve {name}")
        addresses = info.parsed_scoped_addresses(IPVersion.V4Only)
        cfg.log.append(f"resolved {name}: {info.server} {addresses} port {info.port}")
    finally:
        await azc.async_close()
    for address in addresses:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(address, info.port), 3)
        except (OSError, TimeoutError):
            continue
        peer = writer.get_extra_info("peername")[0]
        writer.close()
        return str(peer).split("%")[0]
    raise AppError("mDnsServiceDiscoveryNetworkError", f"cannot connect to {name}")


# --- transport: URLSession with TransportCertificateValidationDelegate ----------


def _tls_context(cfg: AppConfig) -> ssl.SSLContext:
    """SecTrustSetAnchorCertificates([ca]) + AnchorCertificatesOnly: the bundled CA
    is the only trust anchor. The name is checked after the handshake (below),
    because the app connects to an IP and sends no SNI."""
    assert cfg.ca_file is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(cfg.ca_file))
    return ctx


def _check_ssl_policy(der: bytes, host: str) -> None:
    """SecPolicyCreateSSL(true, host): the name as a DNS subjectAltName, EKU serverAuth."""
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if host.lower() not in [n.lower() for n in san.get_values_for_type(x509.DNSName)]:
        raise ssl.SSLCertVerificationError(f"certificate does not name {host}")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        raise ssl.SSLCertVerificationError("certificate lacks EKU serverAuth")


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    first_byte_at: float
    started: float  # monotonic, when the request began (its connection)


async def _read_line(reader: asyncio.StreamReader, idle: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.readline(), idle)
    except TimeoutError:
        raise AppError("connectivityIssues", f"no byte for {idle}s (URLError.timedOut)") from None


async def _body_chunks(resp: _Response, idle: float) -> AsyncIterator[bytes]:
    """The response body as it arrives, de-chunked; each read is bound by the idle timeout."""
    if resp.headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await _read_line(resp.reader, idle)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await _read_line(resp.reader, idle)
                return
            data = b""
            while len(data) < size:
                try:
                    part = await asyncio.wait_for(resp.reader.read(size - len(data)), idle)
                except TimeoutError:
                    raise AppError("connectivityIssues", "URLError.timedOut") from None
                if not part:
                    raise AppError("connectivityIssues", "connection closed mid-chunk")
                data += part
            await _read_line(resp.reader, idle)
            yield data
    else:
        remaining = int(resp.headers.get("content-length", "-1"))
        while remaining != 0:
            try:
                part = await asyncio.wait_for(
                    resp.reader.read(65536 if remaining < 0 else min(65536, remaining)), idle
                )
            except TimeoutError:
                raise AppError("connectivityIssues", "URLError.timedOut") from None
            if not part:
                return
            remaining -= len(part) if remaining > 0 else 0
            yield part


async def _post(cfg: AppConfig, address: str, path: str, body: bytes, token: str) -> _Response:
    ssl_ctx = _tls_context(cfg) if cfg.ca_file else None
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            # server_hostname=None with an IP: Python sends no SNI, like the app.
            asyncio.open_connection(address, cfg.port, ssl=ssl_ctx, server_hostname=None),
            cfg.idle_timeout,
        )
    except (OSError, TimeoutError) as exc:
        raise AppError(
            "connectivityIssues", f"{type(exc).__name__}: {exc}", retryable=True
        ) from None
    if ssl_ctx is not None:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        try:
            _check_ssl_policy(der, cfg.host)
        except ssl.SSLCertVerificationError as exc:
            writer.close()
            raise AppError(
                "connectivityIssues", f"trust evaluation failed: {exc}", retryable=True
            ) from None
    host = f"[{address}]" if ":" in address else address
    head = (
        f"POST {path} HTTP/1.1\r\n"
        # ExpectedHostMiddleware overrides the Host URLSession would send.
        f"Host: {cfg.host}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        "Accept: application/json, text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n"
        "User-Agent: SpeziLLMFogTests/1 CFNetwork\r\n"
        "\r\n"
    ).encode()
    cfg.log.append(f"POST {'https' if cfg.ca_file else 'http'}://{host}:{cfg.port}{path}")
    writer.write(head + body)
    try:
        status_line = await _read_line(reader, cfg.idle_timeout)
    except AppError as exc:
        writer.close()
        exc.retryable = True  # no response yet: the middleware retries
        raise
    if not status_line:
        writer.close()
        raise AppError("connectivityIssues", "closed before a response", retryable=True)
    first_byte_at = time.monotonic() - started
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await _read_line(reader, cfg.idle_timeout)) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return _Response(status, headers, reader, writer, first_byte_at, started)


# --- the request body: LLMFogSession.openAIChatQuery ----------------------------


def encode_request(cfg: AppConfig, messages: list[dict[str, Any]], **parameters: Any) -> bytes:
    """CreateChatCompletionRequest as swift-openapi-runtime encodes it: Foundation's
    JSONEncoder with sorted keys and pretty printing (`"key" : value`), `/`
    escaped as `\\/`, and doubles like 1.0 as `1`."""
    body: dict[str, Any] = {
        "messages": messages,
        "model": cfg.model,
        "stop": parameters.pop("stop", []),  # .case2(stopSequence), [] by default
        "stream": True,
    }
    body.update({k: v for k, v in parameters.items() if v is not None})

    def swift_numbers(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, dict):
            return {k: swift_numbers(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swift_numbers(v) for v in value]
        return value

    text = json.dumps(
        swift_numbers(body), sort_keys=True, indent=2, separators=(",", " : "), ensure_ascii=False
    )
    return text.replace("/", "\\/").encode()


# --- the SSE decoder: swift-openapi-runtime's ServerSentEventsDeserializationSequence ---


@dataclass
class SseEvent:
    data: str | None = None
    event: str | None = None
    id: str | None = None


class SwiftSseDecoder:
    """Lines end at LF, CR or CRLF; a comment line is skipped; an empty line
    dispatches the accumulated event *even when it has no data*; data lines
    join with "\\n"; the predicate (`[DONE]`) ends the sequence."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = SseEvent()
        self.finished = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        while not self.finished:
            match = re.search(rb"\r\n|\r|\n", self._buffer)
            if match is None or (match.group() == b"\r" and match.end() == len(self._buffer)):
                break  # a CR at the end may be the first half of CRLF
            line, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            event = self._line(line.decode(errors="replace"))
            if event is not None:
                if event.data == "[DONE]":
                    self.finished = True
                    break
                events.append(event)
        return events

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            event, self._event = self._event, SseEvent()
            if event.data is not None and event.data.endswith("\n"):
                event.data = event.data[:-1]
            return event
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if not colon:
            return None
        value = value.removeprefix(" ")
        if name == "data":
            self._event.data = (self._event.data or "") + value + "\n"
        elif name == "event":
            self._event.event = value
        elif name == "id":
            self._event.id = value
        return None


# --- generation: LLMFogSession._generate and handleErrorCode ----------------------


@dataclass
class Generation:
    pieces: list[str]  # what the app yields to the UI, in order
    events: int
    attempts: int
    ended_silently: bool  # stopped at an event without data (the guard's `return`)
    first_byte_after: float
    # What a user waits for: the first piece of the answer on screen (None: none came).
    first_token_after: float | None = None


def handle_error_code(status: int, message: str) -> AppError:
    retryable = status == 429 or status >= 500
    if status in (401, 403):
        return AppError("invalidAPIToken", message, status=status)
    if status == 404 and MODEL_NOT_FOUND.search(message):
        return AppError("modelAccessError", message, status=status)
    return AppError("unknownError", f"{status} {message}", status=status, retryable=retryable)


async def chat_once(cfg: AppConfig, address: str, body: bytes, token: str) -> Generation:
    resp = await _post(cfg, address, "/v1/chat/completions", body, token)
    try:
        if resp.status != 200:
            # .undocumented(statusCode:, payload): up to 8 KiB of the body
            data = b""
            async for part in _body_chunks(resp, cfg.idle_timeout):
                data += part
                if len(data) >= 8 * 1024:
                    break
            raise handle_error_code(resp.status, data[: 8 * 1024].decode(errors="replace"))
        decoder = SwiftSseDecoder()
        pieces: list[str] = []
        events = 0
        first_token: float | None = None
        async for part in _body_chunks(resp, cfg.idle_timeout):
            for event in decoder.feed(part):
                events += 1
                if event.data is None:
                    # guard let choices = chatStreamResult.data?.choices else { return }
                    return Generation(pieces, events, 1, True, resp.first_byte_at, first_token)
                try:
                    chunk = json.loads(event.data)
                    choices = chunk["choices"]
                    # Required properties of CreateChatCompletionStreamResponse.
                    missing = {"id", "created", "model", "object"} - set(chunk)
                    if missing:
                        raise KeyError(", ".join(sorted(missing)))
                except (ValueError, KeyError, TypeError) as exc:
                    raise AppError("unknownError", f"cannot decode chunk: {event.data}") from exc
                if not choices:
                    continue
                first = choices[0]
                delta = first["delta"]
                # Only the first choice, only if its role is assistant and it has content.
                if delta.get("role") != "assistant" or not delta.get("content"):
                    continue
                pieces.append(delta["content"])
                if first_token is None:
                    first_token = time.monotonic() - resp.started
            if decoder.finished:
                break
        return Generation(pieces, events, 1, False, resp.first_byte_at, first_token)
    finally:
        resp.writer.close()


async def generate(
    cfg: AppConfig, address: str, messages: list[dict[str, Any]], **parameters: Any
) -> Generation:
    """The middlewares in the app's order: BearerAuthMiddleware reads the token once
    per request, then RetryMiddleware makes up to three attempts for 429, 5xx and
    thrown errors, waiting 1 s then 2 s (Retry-After is not read)."""
    body = encode_request(cfg, messages, **parameters)
    token = cfg.token()
    began = time.monotonic()
    for attempt in range(1, cfg.attempts + 1):
        tried = time.monotonic()
        try:
            result = await chat_once(cfg, address, body, token)
        except AppError as exc:
            if not exc.retryable or attempt == cfg.attempts:
                exc.attempts = attempt
                raise
            cfg.log.append(f"attempt {attempt} failed ({exc}); retrying")
            await asyncio.sleep(cfg.backoff * 2 ** (attempt - 1))
        else:
            result.attempts = attempt
            if result.first_token_after is not None:  # the user waited for every attempt
                result.first_token_after += tried - began
            return result
    raise AssertionError("unreachable")


# --- as a program, to run inside a test's network namespace ------------------------


async def run_app(cfg: AppConfig, prompt: str, address: str | None = None) -> dict[str, Any]:
    """One generation as the app makes it: discover (unless an address is given),
    resolve, stream. The outcome as JSON-able data."""
    outcome: dict[str, Any] = {"ok": False}
    try:
        if address is None:
            service = await discover(cfg)
            outcome["service"] = service[1]
            address = await resolve(cfg, service)
        outcome["address"] = address
        generation = await generate(cfg, address, [{"content": prompt, "role": "user"}])
    except AppError as exc:
        outcome.update(case=exc.case, detail=exc.detail, attempts=exc.attempts)
    else:
        outcome.update(
            ok=True,
            pieces=generation.pieces,
            attempts=generation.attempts,
            ended_silently=generation.ended_silently,
            first_byte_after=generation.first_byte_after,
            first_token_after=generation.first_token_after,
        )
    outcome["log"] = cfg.log
    return outcome


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="a SpeziLLMFog-faithful client")
    parser.add_argument("prompt")
    parser.add_argument("--model", required=True)
    parser.add_argument("--ca", type=Path, help=".https(caCertificate:); without it, .http")
    parser.add_argument("--tokens", type=Path, required=True, help="one token a line, in turn")
    parser.add_argument("--interface", help="the address zeroconf listens on")
    parser.add_argument("--address", help="skip discovery (the app's preferredFogService)")
    parser.add_argument("--browse", type=float, default=0.1)
    parser.add_argument("--idle-timeout", type=float, default=60.0)
    parser.add_argument("--backoff", type=float, default=1.0)
    args = parser.parse_args()
    tokens = iter(args.tokens.read_text().split())
    cfg = AppConfig(
        model=args.model,
        token=lambda: next(tokens),
        ca_file=args.ca,
        browse_seconds=args.browse,
        idle_timeout=args.idle_timeout,
        backoff=args.backoff,
        interfaces=[args.interface] if args.interface else None,
    )
    print(json.dumps(asyncio.run(run_app(cfg, args.prompt, args.address))))


if __name__ == "__main__":
    main()
