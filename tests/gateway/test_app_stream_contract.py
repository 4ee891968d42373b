"""What the SpeziLLMFog app needs of a chat stream, end to end on loopback.

Requests are the app's own bytes (tests/support/spezillmfog_client.encode_request),
answers are read with swift-openapi-runtime's SSE decoder as the app reads
them, against the Ollama stand-in in both of Ollama's wire formats. The
network-level behaviour (mDNS, port 443, no SNI) is in
tests/system/test_spezillmfog_app.py.
"""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest

from fognode.gateway.pipeline.admission import ADMISSION, Admission
from tests.support.gateway import GatewayFactory
from tests.support.helpers import wait_until
from tests.support.ollama_standin import WIRE_FORMATS, OllamaStandIn
from tests.support.spezillmfog_client import (
    MODEL_NOT_FOUND,
    AppConfig,
    SwiftSseDecoder,
    encode_request,
)

GUARD = 20.0
APP = AppConfig(model="llama3.2:1b", token=lambda: "unused")
MESSAGES = [
    {"content": "You are a helpful assistant.", "role": "system"},
    {"content": "Why is the sky blue?", "role": "user"},
]
# Heartbeats scaled down: after 0.2 s of waiting, then every 0.3 s.
FAST_HEARTBEATS = {"stream_heartbeat_after": 0.2, "stream_heartbeat_interval": 0.3}
COMMENT_THEN_BLANK = re.compile(rb"(?:^|\n):[^\n]*\n\r?\n")


async def app_stream(
    url: str, body: bytes, http: aiohttp.ClientSession
) -> tuple[int, bytes, list[str | None]]:
    """POST as the app does; the status, raw bytes and decoded events' data."""
    headers = {"Content-Type": "application/json; charset=utf-8", "Host": "spezillmfog.local"}
    async with asyncio.timeout(GUARD):
        async with http.post(f"{url}/v1/chat/completions", data=body, headers=headers) as resp:
            raw = await resp.read()
            status = resp.status
    events = SwiftSseDecoder().feed(raw) if status == 200 else []
    return status, raw, [e.data for e in events]


def app_pieces(data: list[str | None]) -> list[str]:
    """What the app shows: the first choice's content, only for role assistant."""
    pieces = []
    for item in data:
        assert item is not None, "an event without data: the app stops reading here"
        chunk = json.loads(item)
        for choice in chunk["choices"][:1]:
            delta = choice["delta"]
            if delta.get("role") == "assistant" and delta.get("content"):
                pieces.append(delta["content"])
    return pieces


@pytest.mark.parametrize("wire", WIRE_FORMATS)
async def test_the_app_sees_every_token_and_its_length_limit_works(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession, wire: str
) -> None:
    standin.wire = wire
    gateway = await make_gateway(standin.url)
    body = encode_request(APP, MESSAGES, temperature=1.0, top_p=1.0, seed=7)
    status, _, data = await app_stream(gateway.url, body, http)
    assert status == 200
    assert "".join(app_pieces(data)) == standin.reply  # every token, not only the first

    # max_completion_tokens, which Ollama's OpenAI endpoint ignores, limits the answer.
    body = encode_request(APP, MESSAGES, max_completion_tokens=3)
    status, _, data = await app_stream(gateway.url, body, http)
    assert status == 200
    assert app_pieces(data) == standin.reply.split(" ")[:1] + [
        " " + w for w in standin.reply.split(" ")[1:3]
    ]
    finish = [json.loads(d or "")["choices"][0]["finish_reason"] for d in data if d]
    assert finish[-1] == "length"
    sent = standin.last("/v1/chat/completions").body
    # Only the two documented edits (the length limit, and the usage figures the
    # node counts with and takes out of the stream again), the rest byte for byte.
    assert sent == b'{"max_tokens":3,"stream_options":{"include_usage":true},' + body[1:]


async def test_the_apps_message_shapes_validate(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """An image part, an assistant turn with tool calls, a tool result, stop: [],
    integers where numbers are expected, a response format."""
    gateway = await make_gateway(standin.url)
    messages = [
        {"content": "You see images.", "role": "system"},
        {
            "content": [
                {"image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}, "type": "image_url"}
            ],
            "role": "user",
        },
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "function": {"arguments": '{"city":"Zurich"}', "name": "weather"},
                    "id": "call_1",
                    "type": "function",
                }
            ],
        },
        {"content": "12 degrees", "role": "tool", "tool_call_id": "call_1"},
    ]
    body = encode_request(
        APP,
        messages,
        frequency_penalty=0.0,
        presence_penalty=0.0,
        temperature=1.0,
        response_format={"type": "json_object"},
    )
    assert b'"temperature" : 1\n' in body and b"data:image\\/png" in body  # Swift's encoding
    status, _, data = await app_stream(gateway.url, body, http)
    assert status == 200, data
    assert "".join(app_pieces(data)) == standin.reply


async def test_heartbeats_keep_the_app_waiting_while_the_model_loads(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """A model load longer than the heartbeat delay: the 200 headers come early,
    then comment lines, then the stream; the app decodes it as usual."""
    standin.first_byte_delay = 1.2
    gateway = await make_gateway(standin.url, **FAST_HEARTBEATS)
    status, raw, data = await app_stream(gateway.url, encode_request(APP, MESSAGES), http)
    assert status == 200
    assert raw.startswith(b": keep-alive\n")
    assert raw.count(b": keep-alive\n") >= 3
    assert not COMMENT_THEN_BLANK.search(raw), "a comment followed by a blank line"
    assert "".join(app_pieces(data)) == standin.reply


async def test_heartbeats_tell_a_queued_client_its_place(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    standin.gate = asyncio.Queue()
    gateway = await make_gateway(
        standin.url, max_concurrent_requests=1, per_user_concurrent_requests=4, **FAST_HEARTBEATS
    )
    body = encode_request(APP, MESSAGES)
    first = asyncio.ensure_future(app_stream(gateway.url, body, http))
    admission: Admission = gateway.app[ADMISSION]
    await wait_until(lambda: admission.active == 1, "the first request holds the slot")
    headers = {"Content-Type": "application/json", "Host": "spezillmfog.local"}
    async with asyncio.timeout(GUARD):
        async with http.post(
            f"{gateway.url}/v1/chat/completions", data=body, headers=headers
        ) as resp:
            assert resp.status == 200  # early: the request is still queued
            assert await resp.content.readline() == b": queued 1\n"
            for _ in range(len(standin.reply.split(" ")) * 2 + 8):
                standin.gate.put_nowait(None)  # let both answers through
            raw = b": queued 1\n" + await resp.read()
    assert "".join(app_pieces([e.data for e in SwiftSseDecoder().feed(raw)])) == standin.reply
    status, _, data = await first
    assert status == 200 and "".join(app_pieces(data)) == standin.reply


async def test_fast_errors_keep_their_status(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(standin.url, **FAST_HEARTBEATS)
    missing = AppConfig(model="phi4:14b", token=lambda: "unused")
    status, raw, _ = await app_stream(gateway.url, encode_request(missing, MESSAGES), http)
    assert status == 404
    assert MODEL_NOT_FOUND.search(json.loads(raw)["error"]["message"])
    status, raw, _ = await app_stream(gateway.url, b'{"model": "x", "messages": []}', http)
    assert status == 400


async def test_errors_after_early_headers_arrive_in_band(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    """Queued past the heartbeat delay, a request whose model went missing meanwhile
    (removed on the upstream's machine after the node's check; a model the node's
    check does not list is a plain 404 before the queue) gets the classic words in
    an error event (the app ends the stream with an error)."""
    standin.gate = asyncio.Queue()
    listed = standin.models
    standin.models = (*listed, "phi4:14b")  # a name the app's pattern can match
    gateway = await make_gateway(
        standin.url, max_concurrent_requests=1, per_user_concurrent_requests=4, **FAST_HEARTBEATS
    )
    holder = asyncio.ensure_future(app_stream(gateway.url, encode_request(APP, MESSAGES), http))
    admission: Admission = gateway.app[ADMISSION]
    await wait_until(lambda: admission.active == 1, "the first request holds the slot")
    standin.models = listed
    missing = AppConfig(model="phi4:14b", token=lambda: "unused")
    late = asyncio.ensure_future(app_stream(gateway.url, encode_request(missing, MESSAGES), http))
    await wait_until(lambda: admission.queued == 1, "the second request queues")
    await asyncio.sleep(0.5)  # past the heartbeat delay
    for _ in range(len(standin.reply.split(" ")) + 4):
        standin.gate.put_nowait(None)
    status, raw, data = await late
    assert status == 200 and raw.startswith(b": queued 1\n")
    assert len(data) == 1
    error = json.loads(data[0] or "")["error"]
    assert MODEL_NOT_FOUND.search(error["message"]) and error["code"] == "model_not_found"
    assert (await holder)[0] == 200


async def test_queue_timeout_after_early_headers_arrives_in_band(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    standin.gate = asyncio.Queue()
    gateway = await make_gateway(
        standin.url,
        max_concurrent_requests=1,
        per_user_concurrent_requests=4,
        queue_timeout=0.8,
        **FAST_HEARTBEATS,
    )
    holder = asyncio.ensure_future(app_stream(gateway.url, encode_request(APP, MESSAGES), http))
    admission: Admission = gateway.app[ADMISSION]
    await wait_until(lambda: admission.active == 1, "the first request holds the slot")
    status, raw, data = await app_stream(gateway.url, encode_request(APP, MESSAGES), http)
    assert status == 200 and raw.count(b": queued 1\n") >= 1
    assert json.loads(data[-1] or "")["error"]["code"] == "queue_timeout"
    for _ in range(len(standin.reply.split(" ")) + 4):
        standin.gate.put_nowait(None)
    assert (await holder)[0] == 200


async def test_a_silent_upstream_mid_stream_gets_heartbeats_between_events(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    standin.token_delay = 0.45
    standin.reply = "one two three"
    gateway = await make_gateway(standin.url, **FAST_HEARTBEATS)
    status, raw, data = await app_stream(gateway.url, encode_request(APP, MESSAGES), http)
    assert status == 200
    assert raw.count(b": keep-alive\n") >= 2
    # Only ever between events: after the blank line that ends one (or after
    # another heartbeat, when the upstream's next event was the usage chunk the
    # node takes out).
    for match in re.finditer(rb": keep-alive\n", raw):
        before = raw[: match.start()]
        assert not before or before.endswith((b"\n\n", b": keep-alive\n")), raw
    assert "".join(app_pieces(data)) == "one two three"


async def test_a_client_that_leaves_the_queue_frees_its_place(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    standin.gate = asyncio.Queue()
    gateway = await make_gateway(
        standin.url, max_concurrent_requests=1, per_user_concurrent_requests=4, **FAST_HEARTBEATS
    )
    body = encode_request(APP, MESSAGES)
    admission: Admission = gateway.app[ADMISSION]
    async with aiohttp.ClientSession() as holder_http:
        holder = asyncio.ensure_future(app_stream(gateway.url, body, holder_http))
        await wait_until(lambda: admission.active == 1, "the first request holds the slot")
        async with aiohttp.ClientSession() as leaving:
            resp = await leaving.post(f"{gateway.url}/v1/chat/completions", data=body)
            assert await resp.content.readline() == b": queued 1\n"
            resp.close()
        await wait_until(lambda: admission.queued == 0, "the queue forgot the client")
        for _ in range(len(standin.reply.split(" ")) + 4):
            standin.gate.put_nowait(None)
        assert (await holder)[0] == 200
    await wait_until(lambda: admission.active == 0, "every slot released")
    leftover = [t for t in asyncio.all_tasks() if t.get_name() == "fognode-heartbeat"]
    assert not leftover
