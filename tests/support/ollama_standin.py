"""An Ollama stand-in: an aiohttp server that speaks Ollama's wire format.

No real Ollama can run on the CI machine, so the tests talk to this instead.
It is not a model: it "generates" a fixed reply word by word. What it keeps
faithful is everything a gateway in front of Ollama can observe: the paths,
the SSE chunks of the OpenAI-compatible API (``chatcmpl-`` ids,
``system_fingerprint: fp_ollama``, ``data: [DONE]``), the NDJSON lines of the
native API, Ollama's error texts and status codes, and that a generation is
abandoned when the client's connection closes.

It speaks two versions of Ollama's OpenAI stream (``wire``), because the
gateway must keep clients working across both:

* ``current`` (Ollama 0.32.6 and later, the default; middleware/openai.go's
  ChatWriter): ``role`` only in the first chunk's delta, ``finish_reason``
  in a chunk of its own with an empty delta ``{}``, with
  ``stream_options.include_usage`` a usage chunk with ``choices: []`` (on
  ``/v1/completions`` too);
  a missing model is ``model 'x' not found``.
* ``legacy`` (before 0.32.6): ``role`` in every delta, the last content
  chunk carries ``finish_reason``; a missing model is
  ``model 'x' not found, try pulling it first``.

Like Ollama's OpenAI endpoint it honours ``max_tokens`` (a word stands for
a token; the answer stops with ``finish_reason: length``) and ignores
``max_completion_tokens``.

Which models are in memory is Ollama's ``/api/ps`` (its exact fields:
``name``, ``model``, ``size``, ``digest``, ``details``, ``expires_at`` in
RFC 3339 with nanoseconds, ``size_vram``, ``context_length``). As in Ollama,
a generation loads its model for ``keep_alive`` seconds (5 minutes), unless
``load_on_use`` is off; tests say what is loaded with ``load()``/``unload()``.

Failure modes for tests are switches on the instance (``first_byte_delay``,
``token_delay``, ``stall_after``, ``die_after``, ``gate``, ``hang_up``), and
it records what it received so tests can check what the gateway forwarded.

Like Ollama it can run a limited number of generations at once
(``parallel``, OLLAMA_NUM_PARALLEL) and queue the rest, up to ``max_queue``
(OLLAMA_MAX_QUEUE), beyond which it answers 503 "server busy"; and a model
that is not in memory takes ``load_delay`` seconds to load before its first
token.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

VERSIONS = {"current": "0.32.6", "legacy": "0.12.6"}
WIRE_FORMATS = tuple(VERSIONS)
DEFAULT_MODELS = ("llama3.2:1b", "qwen2.5:0.5b", "nomic-embed-text:latest")
DEFAULT_REPLY = "The sky is blue because air molecules scatter blue sunlight the most."
FINGERPRINT = "fp_ollama"


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int] | None


def _go_kind(value: object) -> str:
    """The JSON kind as Go's decoder names it in its errors."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else "string"


@dataclass
class OllamaStandIn:
    models: tuple[str, ...] = DEFAULT_MODELS
    reply: str = DEFAULT_REPLY
    wire: str = "current"  # one of WIRE_FORMATS
    token_delay: float = 0.0
    first_byte_delay: float = 0.0
    stall_after: int | None = None  # stop sending (but keep the socket) after N chunks
    die_after: int | None = None  # abort the TCP connection after N chunks
    # When set, each chunk waits for one item from this queue: the test
    # releases chunks one by one to prove the gateway relays without buffering.
    gate: asyncio.Queue[None] | None = None
    # Answer every inference request with this (status, json body) instead.
    force_error: tuple[int, dict[str, Any]] | None = None
    # Models in memory (/api/ps): name -> Unix time at which it is unloaded.
    running: dict[str, float] = field(default_factory=dict)
    keep_alive: float = 300.0  # Ollama's default: 5 minutes after the last request
    load_on_use: bool = True
    # False: ignore stream_options.include_usage, as llama-cpp-python's server
    # and Ollama before 0.5 do (no usage chunk in a stream).
    honours_include_usage: bool = True
    # Seconds a model that is not in memory takes to load, before the first
    # byte of the request that needs it (requests that come while it loads
    # wait for the same load).
    load_delay: float = 0.0
    # Generations at once (OLLAMA_NUM_PARALLEL); later ones wait (0: no limit),
    # at most max_queue of them (OLLAMA_MAX_QUEUE): beyond, 503 "server busy".
    parallel: int = 0
    max_queue: int = 512
    # Close the connection without an answer, as a process that dies while it
    # reads the prompt does.
    hang_up: bool = False

    requests: list[Recorded] = field(default_factory=list)
    # SHA-256 of every byte a streamed answer wrote, by the X-Request-ID it got.
    sent_digests: dict[str, str] = field(default_factory=dict)
    # The bytes themselves, when record_bodies is set (small loads only).
    record_bodies: bool = False
    sent_bodies: dict[str, bytes] = field(default_factory=dict)
    active: int = 0
    completed: int = 0
    cancelled: int = 0
    chunks_sent: int = 0
    cancel_event: asyncio.Event = field(default_factory=asyncio.Event)
    # Forwarded requests in flight right now, and the most at once: in total
    # (key "") and by the last message's content (a test's tag per user).
    in_flight: Counter[str] = field(default_factory=Counter)
    peak_in_flight: Counter[str] = field(default_factory=Counter)
    url: str = ""
    busy_answers: int = 0  # 503 "server busy" answered
    _runner: web.AppRunner | None = None
    _loading: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    _slots: asyncio.Semaphore | None = None
    _waiting: int = 0

    # --- lifecycle ------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(middlewares=[self._record], client_max_size=1 << 30)
        self._add_routes(app)
        # Like Ollama (Go's request context), notice a gone client at once.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def forwarded(self) -> list[Recorded]:
        """What reached it through a gateway's proxy (which always sends an
        X-Request-ID), not the gateway's own health and model-list checks."""
        return [r for r in self.requests if "X-Request-ID" in r.headers]

    @property
    def checks(self) -> list[Recorded]:
        """The requests that came without a request id: the gateway's own checks."""
        return [r for r in self.requests if "X-Request-ID" not in r.headers]

    def last(self, path: str) -> Recorded:
        for rec in reversed(self.requests):
            if rec.path == path:
                return rec
        raise AssertionError(f"the stand-in received no request for {path}")

    # --- plumbing -------------------------------------------------------
    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(
            Recorded(
                request.method,
                request.path,
                request.query_string,
                dict(request.headers),
                body,
                tuple(peer[:2]) if peer else None,
            )
        )
        if "X-Request-ID" not in request.headers:
            return await handler(request)
        keys = ("", _last_content(body))
        for key in keys:
            self.in_flight[key] += 1
            self.peak_in_flight[key] = max(self.peak_in_flight[key], self.in_flight[key])
        try:
            return await handler(request)
        finally:
            for key in keys:
                self.in_flight[key] -= 1

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.root)
        r.add_post("/v1/chat/completions", self.openai_chat)
        r.add_post("/v1/completions", self.openai_completions)
        r.add_post("/v1/embeddings", self.openai_embeddings)
        r.add_get("/v1/models", self.openai_models)
        r.add_get("/v1/models/{model:.+}", self.openai_model)
        r.add_post("/api/chat", self.api_chat)
        r.add_post("/api/generate", self.api_generate)
        r.add_post("/api/embed", self.api_embed)
        r.add_post("/api/embeddings", self.api_embeddings)
        r.add_get("/api/tags", self.api_tags)
        r.add_post("/api/show", self.api_show)
        r.add_get("/api/ps", self.api_ps)
        r.add_get("/api/version", self.api_version)
        r.add_post("/api/pull", self.api_pull)
        r.add_post("/api/push", self.api_push)
        r.add_post("/api/create", self.api_create)
        r.add_post("/api/copy", self.api_copy)
        r.add_delete("/api/delete", self.api_delete)
        r.add_route("HEAD", "/api/blobs/{digest}", self.api_blob_head)
        r.add_post("/api/blobs/{digest}", self.api_blob_upload)

    def _words(self) -> list[str]:
        words = self.reply.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    def _has_model(self, name: str) -> bool:
        full = name if ":" in name else f"{name}:latest"
        return any(m in (name, full) for m in self.models)

    def load(self, *names: str, keep_alive: float | None = None) -> None:
        """Put models in memory, as a request for them (or ``ollama run``) would."""
        for name in names:
            full = name if ":" in name else f"{name}:latest"
            listed = next((m for m in self.models if m in (name, full)), full)
            self.running[listed] = time.time() + (
                self.keep_alive if keep_alive is None else keep_alive
            )

    def unload(self, *names: str) -> None:
        """Drop models from memory (``ollama stop``, or keep_alive running out)."""
        for name in names:
            self.running.pop(name, None)
            self.running.pop(f"{name}:latest", None)

    def _used(self, model: str) -> None:
        if self.load_on_use:
            self.load(model)

    async def _emit(
        self, request: web.Request, response: web.StreamResponse, frames: list[bytes]
    ) -> None:
        """Send frames one by one with the configured delays and faults."""
        self.active += 1
        digest = hashlib.sha256()
        written: list[bytes] = []
        rid = request.headers.get("X-Request-ID", "")
        try:
            for index, frame in enumerate(frames):
                if self.die_after is not None and index >= self.die_after:
                    assert request.transport is not None
                    request.transport.abort()
                    return
                if self.stall_after is not None and index >= self.stall_after:
                    await asyncio.sleep(3600)
                if self.gate is not None:
                    await self.gate.get()
                elif self.token_delay and index:
                    await asyncio.sleep(self.token_delay)
                await response.write(frame)
                digest.update(frame)
                if self.record_bodies:
                    written.append(frame)
                self.chunks_sent += 1
            await response.write_eof()
            self.completed += 1
            if rid:
                self.sent_digests[rid] = digest.hexdigest()
                if self.record_bodies:
                    self.sent_bodies[rid] = b"".join(written)
        except (asyncio.CancelledError, ConnectionResetError):
            # Ollama logs this as a 499 and stops the runner for this request.
            self.cancelled += 1
            self.cancel_event.set()
            raise
        finally:
            self.active -= 1

    async def _before_first_byte(self) -> None:
        if self.first_byte_delay:
            try:
                await asyncio.sleep(self.first_byte_delay)
            except asyncio.CancelledError:
                self.cancelled += 1
                self.cancel_event.set()
                raise

    # --- errors, as Ollama words them -----------------------------------
    @staticmethod
    def openai_error(status: int, message: str) -> web.Response:
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
        return web.json_response(body, status=status)

    @staticmethod
    def native_error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    def not_found_text(self, model: str) -> str:
        """Ollama's wording for a missing model on the inference routes.

        Current Ollama (server/routes.go) says `model 'x' not found`; older
        ones added `, try pulling it first`, the form the SpeziLLMFog client
        matches on. The gateway answers the classic form for both.
        """
        if self.wire == "legacy":
            return f"model '{model}' not found, try pulling it first"
        return f"model '{model}' not found"

    # --- OpenAI-compatible API ------------------------------------------
    async def _openai_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            data = json.loads(await request.read())
        except ValueError as exc:
            return self.openai_error(400, str(exc))
        if self.force_error is not None:
            return web.json_response(self.force_error[1], status=self.force_error[0])
        model = data.get("model", "")
        if not self._has_model(model):
            return self.openai_error(404, self.not_found_text(model))
        await self._load(model)
        self._used(model)
        return data

    def _hot(self, model: str) -> bool:
        full = model if ":" in model else f"{model}:latest"
        return any(self.running.get(name, 0) > time.time() for name in (model, full))

    async def _load(self, model: str) -> None:
        """A model not in memory loads first (``load_delay``), once for every
        request that waits for it."""
        if not self.load_delay or self._hot(model):
            return
        loading = self._loading.get(model)
        if loading is None:
            loading = self._loading[model] = asyncio.ensure_future(asyncio.sleep(self.load_delay))
            loading.add_done_callback(lambda _: self._loading.pop(model, None))
            loading.add_done_callback(lambda _: self.load(model))
        await asyncio.shield(loading)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[bool]:
        """A generation's turn, as OLLAMA_NUM_PARALLEL: the rest wait theirs;
        False when OLLAMA_MAX_QUEUE are waiting already."""
        if not self.parallel:
            yield True
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.parallel)
        if self._slots.locked() and self._waiting >= self.max_queue:
            self.busy_answers += 1
            yield False
            return
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield True
        finally:
            self._slots.release()

    def busy(self) -> web.Response:
        """Ollama's answer when its queue is full (server/sched.go: ErrMaxQueue)."""
        message = "server busy, please try again.  maximum pending requests exceeded"
        return self.native_error(503, message)

    async def openai_chat(self, request: web.Request) -> web.StreamResponse:
        async with self._slot() as turn:
            return await self._openai_chat(request) if turn else self.busy()

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        data = await self._openai_body(request)
        if isinstance(data, web.Response):
            return data
        if self.hang_up:
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        await self._before_first_byte()
        words, finish = self._limited_words(data)
        created = int(time.time())
        cid = f"chatcmpl-{random.randint(0, 999)}"
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in data["messages"])
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        base = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": data["model"],
            "system_fingerprint": FINGERPRINT,
        }
        if not data.get("stream"):
            await self._generate_silently(len(words))
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": data["model"],
                    "system_fingerprint": FINGERPRINT,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(words)},
                            "finish_reason": finish,
                        }
                    ],
                    "usage": usage,
                }
            )
        frames = self._chat_frames(base, words, finish)
        if self._wants_usage(data):
            frames.append(_sse(dict(base, choices=[], usage=usage)))
        frames.append(b"data: [DONE]\n\n")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await self._emit(request, response, frames)
        return response

    def _wants_usage(self, data: dict[str, Any]) -> bool:
        options = data.get("stream_options") or {}
        return self.honours_include_usage and options.get("include_usage") is True

    def _limited_words(self, data: dict[str, Any]) -> tuple[list[str], str]:
        """The reply, cut at ``max_tokens`` as Ollama's num_predict would."""
        words = self._words()
        limit = data.get("max_tokens")
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(words):
            return words[:limit], "length"
        return words, "stop"

    def _chat_frames(self, base: dict[str, Any], words: list[str], finish: str) -> list[bytes]:
        def chunk(delta: dict[str, Any], reason: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
            return _sse(dict(base, choices=[choice]))

        if self.wire == "legacy":
            frames = [chunk({"role": "assistant", "content": w}, None) for w in words]
            frames.append(chunk({"role": "assistant", "content": ""}, finish))
            return frames
        frames = [
            chunk({"role": "assistant", "content": w} if i == 0 else {"content": w}, None)
            for i, w in enumerate(words)
        ]
        frames.append(chunk({}, finish))  # FinishChunk: an empty delta of its own
        return frames

    async def openai_completions(self, request: web.Request) -> web.StreamResponse:
        async with self._slot() as turn:
            return await self._openai_completions(request) if turn else self.busy()

    async def _openai_completions(self, request: web.Request) -> web.StreamResponse:
        data = await self._openai_body(request)
        if isinstance(data, web.Response):
            return data
        await self._before_first_byte()
        words = self._words()
        created = int(time.time())
        cid = f"cmpl-{random.randint(0, 999)}"
        base = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": data["model"],
            "system_fingerprint": FINGERPRINT,
        }
        prompt_tokens = len(str(data.get("prompt", "")).split())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        if not data.get("stream"):
            await self._generate_silently(len(words))
            return web.json_response(
                dict(
                    base,
                    choices=[{"text": "".join(words), "index": 0, "finish_reason": "stop"}],
                    usage=usage,
                )
            )
        frames = [
            _sse(dict(base, choices=[{"text": w, "index": 0, "finish_reason": None}]))
            for w in words
        ]
        frames.append(_sse(dict(base, choices=[{"text": "", "index": 0, "finish_reason": "stop"}])))
        if self._wants_usage(data):
            frames.append(_sse(dict(base, choices=[], usage=usage)))  # as Ollama's CompleteWriter
        frames.append(b"data: [DONE]\n\n")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await self._emit(request, response, frames)
        return response

    async def _generate_silently(self, n_tokens: int) -> None:
        """Non-streamed answers still take generation time and can be cancelled."""
        self.active += 1
        try:
            for _ in range(n_tokens):
                if self.gate is not None:
                    await self.gate.get()
                elif self.token_delay:
                    await asyncio.sleep(self.token_delay)
            self.completed += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            self.cancel_event.set()
            raise
        finally:
            self.active -= 1

    def _vector(self, text: str) -> list[float]:
        seed = sum(map(ord, text)) or 1
        return [((seed * (i + 7)) % 97) / 97.0 for i in range(8)]

    async def openai_embeddings(self, request: web.Request) -> web.Response:
        data = await self._openai_body(request)
        if isinstance(data, web.Response):
            return data
        inputs = data["input"] if isinstance(data["input"], list) else [data["input"]]
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "embedding": self._vector(str(t)), "index": i}
                    for i, t in enumerate(inputs)
                ],
                "model": data["model"],
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
        )

    def _model_card(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 1700000000, "owned_by": "library"}

    async def openai_models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [self._model_card(m) for m in self.models]}
        )

    async def openai_model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        if not self._has_model(name):
            return self.openai_error(404, f"model '{name}' not found")
        return web.json_response(self._model_card(name))

    # --- native API -----------------------------------------------------
    async def _native_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError as exc:
            return self.native_error(400, str(exc))
        # Ollama decodes the body into a Go struct (ShouldBindJSON): a body
        # that is not an object, or a model name that is not a string, is a
        # 400 with Go's words, never a crash.
        if not isinstance(data, dict):
            return self.native_error(
                400, f"json: cannot unmarshal {_go_kind(data)} into Go value of type api.Request"
            )
        for key in ("model", "name"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                return self.native_error(
                    400,
                    f"json: cannot unmarshal {_go_kind(value)} into Go struct field "
                    f"Request.{key} of type string",
                )
        if self.force_error is not None:
            return web.json_response(self.force_error[1], status=self.force_error[0])
        return data

    async def _native_generation(self, request: web.Request, chat: bool) -> web.StreamResponse:
        async with self._slot() as turn:
            return await self._native_generating(request, chat) if turn else self.busy()

    async def _native_generating(self, request: web.Request, chat: bool) -> web.StreamResponse:
        data = await self._native_body(request)
        if isinstance(data, web.Response):
            return data
        model = data.get("model", "")
        if not model:
            return self.native_error(400, "model is required")
        if not self._has_model(model):
            return self.native_error(404, self.not_found_text(model))
        self._used(model)
        await self._before_first_byte()
        words = self._words()

        def line(text: str, done: bool) -> dict[str, Any]:
            entry: dict[str, Any] = {
                "model": model,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            }
            if chat:
                entry["message"] = {"role": "assistant", "content": text}
            else:
                entry["response"] = text
            entry["done"] = done
            if done:
                entry.update(
                    done_reason="stop",
                    total_duration=1_000_000,
                    load_duration=100_000,
                    prompt_eval_count=5,
                    prompt_eval_duration=200_000,
                    eval_count=len(words),
                    eval_duration=700_000,
                )
            return entry

        if data.get("stream", True) is False:
            await self._generate_silently(len(words))
            return web.json_response(line("".join(words), True))
        frames = [json.dumps(line(w, False)).encode() + b"\n" for w in words]
        frames.append(json.dumps(line("", True)).encode() + b"\n")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await self._emit(request, response, frames)
        return response

    async def api_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._native_generation(request, chat=True)

    async def api_generate(self, request: web.Request) -> web.StreamResponse:
        return await self._native_generation(request, chat=False)

    async def api_embed(self, request: web.Request) -> web.Response:
        data = await self._native_body(request)
        if isinstance(data, web.Response):
            return data
        if not self._has_model(data.get("model", "")):
            return self.native_error(404, self.not_found_text(data.get("model", "")))
        self._used(data["model"])
        inputs = data.get("input", "")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        return web.json_response(
            {
                "model": data["model"],
                "embeddings": [self._vector(str(t)) for t in inputs],
                "total_duration": 14_143_917,
                "load_duration": 1_019_500,
                "prompt_eval_count": len(inputs),
            }
        )

    async def api_embeddings(self, request: web.Request) -> web.Response:
        data = await self._native_body(request)
        if isinstance(data, web.Response):
            return data
        if not self._has_model(data.get("model", "")):
            return self.native_error(404, self.not_found_text(data.get("model", "")))
        self._used(data["model"])
        return web.json_response({"embedding": self._vector(str(data.get("prompt", "")))})

    def _tag(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": "2025-01-01T00:00:00.000000000Z",
            "size": 1_321_098_329,
            "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "1.2B",
                "quantization_level": "Q8_0",
            },
        }

    async def api_tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [self._tag(m) for m in self.models]})

    async def api_show(self, request: web.Request) -> web.Response:
        data = await self._native_body(request)
        if isinstance(data, web.Response):
            return data
        name = data.get("model") or data.get("name") or ""
        if not self._has_model(name):
            return self.native_error(404, f"model '{name}' not found")
        tag = self._tag(name)
        return web.json_response(
            {
                "modelfile": f"FROM {name}\n",
                "parameters": 'stop "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": tag["details"],
                "model_info": {"general.architecture": "llama"},
                "capabilities": ["completion"],
                "modified_at": tag["modified_at"],
            }
        )

    async def api_ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": self.running_models()})

    def running_models(self) -> list[dict[str, Any]]:
        """/api/ps's entries, in Ollama's fields."""
        now = time.time()
        for name in [n for n, until in self.running.items() if until <= now]:
            del self.running[name]  # Ollama unloads a model when its keep_alive runs out
        entries = []
        for name, until in sorted(self.running.items()):
            tag = self._tag(name)
            entries.append(
                {
                    "name": name,
                    "model": name,
                    "size": tag["size"],
                    "digest": tag["digest"],
                    "details": tag["details"],
                    "expires_at": _rfc3339(until),
                    "size_vram": tag["size"],
                    "context_length": 4096,
                }
            )
        return entries

    async def api_version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSIONS[self.wire]})

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    # --- pulling a model, as Ollama streams it ------------------------------
    # Layers of a pulled model (llama3.2:1b's sizes): "pulling <digest>" lines
    # report each one's total and growing completed bytes, one layer after
    # another. `pull_pace` is the pause between progress lines (Ollama ticks
    # every 60 ms) so a test can watch a pull; `pull_steps` lines per layer.
    pull_layers: tuple[int, ...] = (1_321_082_688, 7_711, 6_016, 1_401, 96, 485)
    pull_steps: int = 4
    pull_pace: float = 0.0
    # Names the registry has; None: every well-formed name can be pulled.
    registry: tuple[str, ...] | None = None

    async def api_pull(self, request: web.Request) -> web.StreamResponse:
        data = await self._native_body(request)
        if isinstance(data, web.Response):
            return data
        name = data.get("model") or data.get("name") or ""
        if request.path != "/api/pull":  # push and create: their short stream
            return await self._short_progress(request, data)
        if not name or any(c.isspace() for c in name) or name.startswith(("/", ":")):
            return self.native_error(400, "invalid model name")
        full = name if ":" in name else f"{name}:latest"
        lines = self._pull_lines(full)
        if data.get("stream", True) is False:
            # Ollama still pulls, then answers with the last status (or the error).
            latest: dict[str, Any] = {}
            async for line in lines:
                if "error" in line:
                    return self.native_error(500, line["error"])
                latest = line
            return web.json_response(latest)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        self.active += 1
        try:
            async for line in lines:
                await response.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
                self.chunks_sent += 1
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            # Ollama cancels the blob download when its last waiting client leaves.
            self.cancelled += 1
            self.cancel_event.set()
            raise
        finally:
            self.active -= 1
        return response

    async def _pull_lines(self, name: str) -> AsyncIterator[dict[str, Any]]:
        """The status lines of a pull, paced; the model exists only after "success"."""
        yield {"status": "pulling manifest"}
        await asyncio.sleep(self.pull_pace)
        if self.registry is not None and not any(
            r in (name, name.removesuffix(":latest")) for r in self.registry
        ):
            yield {"error": "pull model manifest: file does not exist"}
            return
        for index, total in enumerate(self.pull_layers):
            digest = "sha256:" + hashlib.sha256(f"{name}/{index}".encode()).hexdigest()
            status = f"pulling {digest[7:19]}"
            # The first line announces the size; `completed` is omitted while 0.
            yield {"status": status, "digest": digest, "total": total}
            for step in range(1, self.pull_steps + 1):
                await asyncio.sleep(self.pull_pace)
                yield {
                    "status": status,
                    "digest": digest,
                    "total": total,
                    "completed": total * step // self.pull_steps,
                }
        for status in ("verifying sha256 digest", "writing manifest"):
            await asyncio.sleep(self.pull_pace)
            yield {"status": status}
        if not self._has_model(name):
            self.models = (*self.models, name)
        self.completed += 1
        yield {"status": "success"}

    async def _short_progress(
        self, request: web.Request, data: dict[str, Any]
    ) -> web.StreamResponse:
        statuses = [
            {"status": "pulling manifest"},
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        if data.get("stream", True) is False:
            return web.json_response({"status": "success"})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await self._emit(request, response, [json.dumps(s).encode() + b"\n" for s in statuses])
        return response

    async def api_push(self, request: web.Request) -> web.StreamResponse:
        return await self.api_pull(request)

    async def api_create(self, request: web.Request) -> web.StreamResponse:
        return await self.api_pull(request)

    async def api_copy(self, request: web.Request) -> web.Response:
        data = await self._native_body(request)
        if isinstance(data, web.Response):
            return data
        if not self._has_model(data.get("source", "")):
            return self.native_error(404, f"model '{data.get('source', '')}' not found")
        return web.Response(status=200)

    async def api_delete(self, request: web.Request) -> web.Response:
        data = await self._native_body(request)
        if isinstance(data, web.Response):
            return data
        name = data.get("model") or data.get("name") or ""
        if not self._has_model(name):
            return self.native_error(404, f"model '{name}' not found")
        return web.Response(status=200)

    async def api_blob_head(self, request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def api_blob_upload(self, request: web.Request) -> web.Response:
        return web.Response(status=201)


def _rfc3339(when: float) -> str:
    """A time as Go's RFC3339Nano writes it: local time, nanoseconds without
    trailing zeros, the offset (``2025-06-04T14:38:31.83753-07:00``; ``Z`` in UTC)."""
    local = dt.datetime.fromtimestamp(when).astimezone()
    nanos = f"{round(when * 1e9) % 1_000_000_000:09d}".rstrip("0")
    offset = local.strftime("%z")
    zone = "Z" if offset == "+0000" else f"{offset[:3]}:{offset[3:]}"
    return f"{local:%Y-%m-%dT%H:%M:%S}" + (f".{nanos}" if nanos else "") + zone


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _last_content(body: bytes) -> str:
    """The content of a chat request's last message ("" for anything else)."""
    try:
        messages = json.loads(body)["messages"]
        return str(messages[-1]["content"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def main() -> None:
    """Run the stand-in as its own process (benchmarks, manual trials)."""
    import argparse

    parser = argparse.ArgumentParser(description="Ollama stand-in (wire format only, no model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--reply", default=DEFAULT_REPLY)
    parser.add_argument("--wire", choices=WIRE_FORMATS, default="current")
    parser.add_argument(
        "--first-byte-delay", type=float, default=0.0, help="seconds, like a model loading"
    )
    parser.add_argument(
        "--loaded", action="append", default=[], help="a model in memory at start (repeatable)"
    )
    parser.add_argument(
        "--models",
        help="the models it has, comma-separated (default: " + ",".join(DEFAULT_MODELS) + ")",
    )
    parser.add_argument(
        "--load-delay",
        type=float,
        default=0.0,
        help="seconds a model not in memory takes to load before its first byte",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=0,
        help="generations at once, as OLLAMA_NUM_PARALLEL; the rest wait (0: no limit)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=512, help="waiting beyond that: 503 (OLLAMA_MAX_QUEUE)"
    )
    args = parser.parse_args()

    async def run() -> None:
        standin = OllamaStandIn(
            models=tuple(args.models.split(",")) if args.models else DEFAULT_MODELS,
            token_delay=args.token_delay,
            reply=args.reply,
            wire=args.wire,
            first_byte_delay=args.first_byte_delay,
            load_delay=args.load_delay,
            parallel=args.parallel,
            max_queue=args.max_queue,
        )
        standin.load(*args.loaded)
        url = await standin.start(args.host, args.port)
        print(f"Ollama stand-in listening on {url}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
