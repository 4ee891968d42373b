"""The connection to Ollama: one pool of kept-alive connections and its failure modes.

One pool per upstream (hop.py, a lean HTTP/1.1 client) is shared by every
request and by the pool's checks, so a busy node reuses TCP connections
instead of paying a connect per request. Timeouts are split by phase
(connect, first byte, idle gap) instead of one total timeout: a long
generation on a CPU is normal, a silent upstream is not.
"""

from __future__ import annotations

import contextlib
import math
import re
import ssl
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import StreamReader
from multidict import CIMultiDict
from yarl import URL

from ... import safejson
from ...fog.hop import HEADERS as FOG_HEADERS
from ...routing import warm
from ...routing.holders import model_keys
from ...routing.pace import Pace
from ...routing.warm import LoadedModel
from ...supervision.breaker import Breaker, BreakerOptions
from ..core.errors import GatewayError, unreadable_body
from .hop import (
    BodyBroken,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    HeadTimeout,
    HopError,
    HopOptions,
    HopPool,
    HopResponse,
    RequestBodyError,
    StatusError,
)

# What the relay reads: the upstream's answer, and how its body can break off.
UpstreamResponse = HopResponse
UpstreamBroken = BodyBroken

# RFC 9110 section 7.6.1 hop-by-hop fields, plus the ones that describe the
# framing of one particular connection (HTTP2-Settings: RFC 7540 section 3.2.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "http2-settings",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers that must not travel upstream: the client's credentials are
# for the gateway, not for Ollama, and Host/Content-Length are recomputed; the
# fog's hop headers (fog/hop.py) are between members only, and a phone's
# copy of them means nothing anywhere.
_DROP_REQUEST = (
    HOP_BY_HOP
    | {"host", "content-length", "authorization", "cookie", "expect"}
    | {name.lower() for name in FOG_HEADERS}
)
# Response headers the gateway sets itself.
_DROP_RESPONSE = HOP_BY_HOP | {"content-length", "date", "server"}
# aiohttp inflates request bodies in these encodings before a handler reads
# them (aiohttp.http_parser), so what goes upstream is the inflated body and
# its Content-Encoding must not go with it.
DECODED_BY_SERVER = frozenset({"gzip", "deflate", "br", "zstd"})

# What RFC 9110 section 5.5 forbids in a field (tab is allowed).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

START_OLLAMA_HINT = (
    "Start Ollama with `ollama serve` (or `systemctl start ollama`, or "
    "`docker compose up -d ollama`), or point FOGNODE_UPSTREAM_URL at a running one."
)


_PROCESSING = re.compile(rb"^llamacpp:requests_processing (\S+)$", re.M)


def _requests_processing(metrics: bytes) -> int | None:
    """The requests llama.cpp's server is running, from its Prometheus text."""
    found = _PROCESSING.search(metrics)
    return round(float(found.group(1))) if found else None


def _connection_tokens(headers: Any) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", []):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def filter_request_headers(headers: Any) -> CIMultiDict[str]:
    # A new set only for a request that names fields in Connection (rare).
    drop = _DROP_REQUEST | _connection_tokens(headers) if "Connection" in headers else _DROP_REQUEST
    if headers.get("Content-Encoding", "").strip().lower() in DECODED_BY_SERVER:
        drop = drop | {"content-encoding"}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def filter_response_headers(headers: Any) -> CIMultiDict[str]:
    """What of the upstream's response headers goes to the client: not the
    hop-by-hop ones, and none with a control character, which aiohttp's
    client accepts (it parses responses leniently) but its server refuses
    to write, so relaying one failed the whole response."""
    drop = (
        _DROP_RESPONSE | _connection_tokens(headers) if "Connection" in headers else _DROP_RESPONSE
    )
    search = _CONTROL.search
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in drop and not search(k + v)
    )


def relayable_reason(reason: str | None) -> str | None:
    """The upstream's reason phrase, unless it cannot be written (then the
    standard phrase for the status)."""
    return None if reason is None or _CONTROL.search(reason) else reason


def describe(exc: BaseException) -> str:
    """An upstream failure in words that do not quote the upstream's bytes.

    Parser errors may quote the offending bytes on the lines after the first
    (and a 502 body goes to the client): the first line says enough (hop.py's
    errors never quote them at all).
    """
    message = getattr(exc, "message", None)
    text = str(message) if isinstance(message, str) and message else str(exc)
    first = text.strip().splitlines()[0].rstrip(":") if text.strip() else ""
    status = getattr(exc, "status", None)
    kind = type(exc).__name__
    return f"{kind} {status}: {first}" if status else f"{kind}: {first}" if first else kind


@dataclass(frozen=True)
class UpstreamOptions:
    kind: str  # "ollama", "openai" or "embedded" (decided at start)
    connect_timeout: float
    first_byte_timeout: float  # until the response headers (model load, prompt)
    max_connections: int  # keep-alive pool size per upstream
    api_key: str | None = None  # the upstream's own credential (never a client's)
    check_interval: float = 15.0  # the pool's health and model-list checks
    check_timeout: float = 3.0  # how long one check may take
    max_concurrent: int = 0  # requests in flight per upstream (0: no cap)
    # Conversation affinity (routing/): on, conversations remembered, for how long.
    affinity: bool = True
    affinity_entries: int = 10_000
    affinity_seconds: float = 600.0
    # An https upstream's TLS: the context, and a look at the certificate it
    # presented (a fog member's peer port: mutual TLS, the member's marker).
    tls: ssl.SSLContext | None = None
    check_peer: Callable[[bytes | None], object] | None = None
    # When to take an upstream out and back in (routing/breaker.py).
    breaker: BreakerOptions = field(default_factory=BreakerOptions)
    load_seconds: float = 5.0  # expected model load time until one is measured
    wait_timeout: float = 120.0  # longest wait for a slot on an upstream at its cap


class UpstreamNotReached(GatewayError):
    """Nothing was sent (refused, timed out connecting, still starting): another
    upstream may take the request."""


class UpstreamGone(GatewayError):
    """The upstream closed the connection before any answer: the client has had
    nothing from it, so another upstream may take the request (this one may
    have begun to read it; it answers nobody now)."""


def upstream_auth_headers(api_key: str | None) -> dict[str, str]:
    """The one place the upstream key is put on a request."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def without_password(url: str) -> str:
    """The URL as messages, logs and `fognode config` show it."""
    parsed = URL(url)
    return str(parsed.with_password(None)) if parsed.password is not None else url


class LocalUpstream(Protocol):
    """An upstream process fognode runs itself (the embedded model).

    Its supervisor knows when it is loading or restarting, so requests get a
    503 with Retry-After then, instead of a connection error or a wait.
    """

    def not_ready(self) -> tuple[str, float] | None:
        """None when it serves; else why not, and seconds until it likely will."""
        ...

    def crashed(self) -> tuple[str, float]:
        """Same, for a request that found it gone before its supervisor noticed."""
        ...


def not_ready_error(reason: str, retry_after: float) -> UpstreamNotReached:
    return UpstreamNotReached(
        503,
        reason,
        code="upstream_starting",
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


class Upstream:
    """Owns the connections to one upstream for the lifetime of the app."""

    def __init__(self, base: str, options: UpstreamOptions) -> None:
        self.options = options
        self._origin = base.rstrip("/")
        # What messages, logs and probes name: without a password in the URL.
        self.base = without_password(self._origin)
        self._hop: HopPool | None = None
        # What the pool knows of this upstream (refreshed by its health checks).
        # healthy: False while its breaker has it out; None: not checked yet.
        self.healthy: bool | None = None
        self.answered: bool | None = None  # did its last check get an answer
        self.last_error: str | None = None  # why the last check (or request) failed
        self.breaker = Breaker(options.breaker)
        self.pace = Pace()  # how fast it has been lately (routing/pace.py)
        self._models: frozenset[str] = frozenset()
        self.model_keys: frozenset[str] = frozenset()  # its models as routing compares them
        # The models in its memory (Ollama's /api/ps), and those it answered
        # for since the last check (in memory now, whatever the check said).
        self.loaded: dict[str, LoadedModel] = {}
        self.warmed: set[str] = set()
        self.active = 0
        self.started: list[float] = []  # when each request in flight was sent (monotonic)
        self.picked = 0  # when routing last chose it (a counter): equals take turns
        self.local: LocalUpstream | None = None  # set when fognode runs it
        # What llama.cpp's server says of itself (/props, /metrics) at the last
        # check: the requests it runs at once, and how many it was running.
        # None: not known (Ollama, other servers).
        self.slots: int | None = None
        self.slots_busy: int | None = None
        self._llama: bool | None = None  # None: not asked yet; False: not llama.cpp's

    @property
    def models(self) -> frozenset[str]:
        """The models it listed at its last answered check."""
        return self._models

    @models.setter
    def models(self, names: frozenset[str]) -> None:
        self._models = names
        self.model_keys = model_keys(names)

    async def start(self) -> None:
        self._hop = HopPool(
            self._origin,
            HopOptions(
                max_connections=self.options.max_connections,
                connect_timeout=self.options.connect_timeout,
                ssl=self.options.tls,
                check_peer=self.options.check_peer,
                # llama.cpp's server closes the connection after every streamed
                # answer while it says Keep-Alive: known for the embedded engine,
                # learned from any other upstream that does it.
                reuse_after_stream=self.options.kind != "embedded",
            ),
        )

    async def close(self) -> None:
        if self._hop is not None:
            await self._hop.close()
            self._hop = None

    @property
    def hop(self) -> HopPool:
        if self._hop is None:
            raise RuntimeError("upstream used before app startup")
        return self._hop

    def _raise_if_local(self) -> None:
        """A process fognode runs died under this request: its supervisor restarts it."""
        if self.local is not None:
            raise not_ready_error(*self.local.crashed()) from None

    def auth_headers(self) -> dict[str, str]:
        """The upstream's own credential, for every request to it (probes too)."""
        return upstream_auth_headers(self.options.api_key)

    async def get_json(self, path: str, headers: CIMultiDict[str] | None = None) -> Any:
        """GET one of the upstream's JSON documents (version, model list).

        ``headers``: a client's, when the document answers a client's request.
        Callers bound the time (the pool's check timeout); a status that is
        not a success raises StatusError.
        """
        return safejson.loads(await self.get_body(path, headers))

    async def get_body(self, path: str, headers: CIMultiDict[str] | None = None) -> bytes:
        """GET one of the upstream's documents, whole (see :meth:`get_json`)."""
        sent = CIMultiDict(headers or {})
        sent.popall("Accept-Encoding", None)  # the body is parsed here, not relayed
        sent.update(self.auth_headers())
        answer = await self.hop.request(
            "GET", path, sent, None, head_timeout=self.options.first_byte_timeout
        )
        try:
            if answer.status >= 400:
                raise StatusError(answer.status)
            body = await answer.read()
        except BaseException:
            answer.close()
            raise
        answer.release()
        return body

    @property
    def kind(self) -> str:
        return self.options.kind

    async def version(self) -> str | None:
        """Ollama's version; OpenAI-compatible servers have no such endpoint."""
        if self.kind != "ollama":
            return None
        value = (await self.get_json("/api/version")).get("version")
        return value if isinstance(value, str) else None

    async def model_names(self) -> list[str]:
        """The models the upstream serves: Ollama's /api/tags, else /v1/models."""
        if self.kind == "ollama":
            entries = (await self.get_json("/api/tags")).get("models") or []
            names = [m.get("name") or m.get("model") for m in entries if isinstance(m, dict)]
        else:
            entries = (await self.get_json("/v1/models")).get("data") or []
            names = [m.get("id") for m in entries if isinstance(m, dict)]
        return sorted(n for n in names if isinstance(n, str))

    async def engine_state(self) -> tuple[int | None, int | None, bool]:
        """What llama.cpp's server says of itself: its slots (``/props``), how
        many are busy (``/metrics``, when it serves them) and whether it sleeps
        (its model unloaded until the next request). Neither document wakes it
        or resets its idle timer (``/slots`` would). Other servers have no
        ``/props``: asked once, then not again."""
        if self.kind == "ollama" or self._llama is False:
            return None, None, False
        try:
            props = await self.get_json("/props")
        except StatusError:
            self._llama = False
            return None, None, False
        self._llama = isinstance(props, dict) and "total_slots" in props
        if not self._llama:
            return None, None, False
        total = props.get("total_slots")
        slots = total if isinstance(total, int) and total > 0 else None
        busy: int | None = None
        with contextlib.suppress(StatusError, ValueError):  # /metrics is off by default
            busy = _requests_processing(await self.get_body("/metrics"))
        return slots, busy, props.get("is_sleeping") is True

    async def loaded_models(self, names: list[str]) -> dict[str, LoadedModel]:
        """The models in its memory: Ollama's /api/ps; what an OpenAI-compatible
        server serves (``names``, its model list) is loaded while it runs."""
        if self.kind != "ollama":
            return warm.served(names)
        return warm.from_ollama_ps(await self.get_json("/api/ps"))

    async def open(
        self,
        method: str,
        raw_path_and_query: str,
        *,
        headers: CIMultiDict[str],
        data: object = None,
    ) -> UpstreamResponse:
        """Send the request and wait for the response headers.

        The caller owns the returned response and must release or close it.
        Connection problems and timeouts become GatewayErrors that name the
        upstream, so an operator reading the client's error knows what to fix.
        """
        if self.local is not None and (waiting := self.local.not_ready()) is not None:
            raise not_ready_error(*waiting)
        headers.update(self.auth_headers())
        timeout = self.options.first_byte_timeout
        if isinstance(data, StreamReader):
            body: bytes | AsyncIterable[bytes] | None = data.iter_any()
        elif data is None or isinstance(data, bytes):
            body = data
        else:
            raise TypeError(f"cannot send a {type(data).__name__} upstream")
        try:
            return await self.hop.request(
                method, raw_path_and_query, headers, body, head_timeout=timeout
            )
        except ConnectTimeout:
            raise UpstreamNotReached(
                504,
                f"Timed out connecting to the upstream at {self.base} after "
                f"{self.options.connect_timeout:g}s. {START_OLLAMA_HINT}",
                code="upstream_connect_timeout",
            ) from None
        except HeadTimeout:
            raise GatewayError(
                504,
                f"The upstream at {self.base} sent no response within "
                f"{timeout:g}s (FOGNODE_FIRST_BYTE_TIMEOUT).",
                code="upstream_first_byte_timeout",
            ) from None
        except ConnectFailed as exc:
            self._raise_if_local()
            raise UpstreamNotReached(
                502,
                f"Cannot reach the upstream at {self.base}: {exc.reason}. {START_OLLAMA_HINT}",
                code="upstream_unreachable",
            ) from None
        except Disconnected:
            self._raise_if_local()
            raise UpstreamGone(
                502,
                f"The upstream at {self.base} closed the connection before answering.",
                code="upstream_disconnected",
            ) from None
        except RequestBodyError:
            raise unreadable_body() from None  # the client's streamed body, not the upstream
        except HopError as exc:
            self._raise_if_local()
            raise GatewayError(
                502,
                f"Request to the upstream at {self.base} failed: {describe(exc)}.",
                code="upstream_error",
            ) from None
