"""Usage accounting and quotas in the gateway, end to end through the stand-in.

Every request goes over a real socket through the whole pipeline; what the
node recorded is read back from its SQLite file. The stand-in reports its
own figures (OpenAI ``usage``, Ollama's ``prompt_eval_count``/``eval_count``)
computed from what it generated, so "exact" means: the same numbers the
upstream gave, and the number of content chunks the client received when
the upstream gave none or the answer was cut short.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fognode.auth.api_keys import entry_for, new_key
from fognode.gateway.pipeline.admission import ADMISSION
from fognode.gateway.pipeline.quotas import USAGE, Meter
from fognode.usage.counter import Tokens
from fognode.usage.record import Outcome
from tests.support.gateway import GatewayFactory
from tests.support.helpers import CHAT, STREAMED_CHAT, wait_until
from tests.support.ollama_standin import WIRE_FORMATS, OllamaStandIn
from tests.support.usage import post, recorded, rid, rows

FAST = {"usage_flush_seconds": 0.02}
WORDS = len(OllamaStandIn().reply.split(" "))  # the stand-in's completion, in tokens
PROMPT = "Why is the sky blue and not green?"
PROMPT_WORDS = len(PROMPT.split())
MESSAGES = [{"role": "user", "content": PROMPT}]
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)


def sse_payloads(raw: bytes) -> list[Any]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


# --- exact totals ---------------------------------------------------------------------

# route, body, (prompt, completion) as the stand-in reports them
CASES: list[tuple[str, dict[str, Any], tuple[int, int]]] = [
    ("/v1/chat/completions", {"messages": MESSAGES, "stream": True}, (PROMPT_WORDS, WORDS)),
    ("/v1/chat/completions", {"messages": MESSAGES}, (PROMPT_WORDS, WORDS)),
    ("/v1/completions", {"prompt": PROMPT, "stream": True}, (PROMPT_WORDS, WORDS)),
    ("/v1/completions", {"prompt": PROMPT}, (PROMPT_WORDS, WORDS)),
    ("/v1/embeddings", {"input": ["a", "b", "c"]}, (3, 0)),
    ("/api/chat", {"messages": MESSAGES}, (5, WORDS)),
    ("/api/chat", {"messages": MESSAGES, "stream": False}, (5, WORDS)),
    ("/api/generate", {"prompt": PROMPT}, (5, WORDS)),
    ("/api/generate", {"prompt": PROMPT, "stream": False}, (5, WORDS)),
    ("/api/embed", {"input": ["a", "b"]}, (2, 0)),
]


@pytest.mark.parametrize("wire", WIRE_FORMATS)
async def test_every_inference_route_records_the_upstreams_exact_figures(
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    wire: str,
) -> None:
    standin.wire = wire
    gateway = await make_gateway(standin.url, **FAST)
    ids = []
    for path, body, _ in CASES:
        ids.append(rid())
        status, raw, _ = await post(
            http, gateway.url + path, {"model": "llama3.2:1b", **body}, request_id=ids[-1]
        )
        assert status == 200, raw
        if body.get("stream") is True:
            # The node asked for the usage chunk; the client, who did not, never sees it.
            assert b'"usage"' not in raw and b"[DONE]" in raw
    records = {r["request_id"]: r for r in await recorded(gateway, ids)}
    assert len(records) == len(ids)
    for request_id, (path, _, (prompt, completion)) in zip(ids, CASES, strict=True):
        record = records[request_id]
        assert (record["route"], record["model"]) == (path, "llama3.2:1b")
        assert (record["prompt_tokens"], record["completion_tokens"]) == (prompt, completion), path
        assert (record["outcome"], record["partial"]) == ("completed", 0)
        assert record["uid"] == "anonymous" and record["upstream"] == standin.url
        assert record["ended_at"] >= record["started_at"]
    # The streamed OpenAI requests were sent with the one documented edit.
    sent = [json.loads(r.body) for r in standin.forwarded if r.path.startswith("/v1/")]
    streamed = [s for s in sent if s.get("stream")]
    assert len(streamed) == 2
    assert all(s["stream_options"] == {"include_usage": True} for s in streamed)


async def test_a_client_that_asked_for_usage_keeps_its_chunk_and_figures_match(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(standin.url, **FAST)
    request_id = rid()
    body = {**STREAMED_CHAT, "messages": MESSAGES, "stream_options": {"include_usage": True}}
    status, raw, _ = await post(
        http, f"{gateway.url}/v1/chat/completions", body, request_id=request_id
    )
    assert status == 200
    [usage] = [p["usage"] for p in sse_payloads(raw) if p.get("usage")]
    [record] = await recorded(gateway, [request_id])
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    # Sent as the client wrote it: it asked already.
    assert standin.last("/v1/chat/completions").body == json.dumps(body).encode()


async def test_an_upstream_that_ignores_include_usage_is_counted_by_delivered_chunks(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    standin.honours_include_usage = False  # llama-cpp-python's server, Ollama before 0.5
    gateway = await make_gateway(standin.url, **FAST)
    request_id = rid()
    body = {**STREAMED_CHAT, "messages": MESSAGES}
    status, raw, _ = await post(
        http, f"{gateway.url}/v1/chat/completions", body, request_id=request_id
    )
    assert status == 200
    delivered = [
        p for p in sse_payloads(raw) if p["choices"] and p["choices"][0]["delta"].get("content")
    ]
    [record] = await recorded(gateway, [request_id])
    assert record["completion_tokens"] == len(delivered) == WORDS
    # No figure for the prompt: the estimate made at admission (characters / 4, + 4 per message).
    assert record["prompt_tokens"] == -(-len(PROMPT) // 4) + 4
    assert (record["outcome"], record["partial"]) == ("completed", 0)


# --- endings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "content_key"),
    [
        ("/v1/chat/completions", {**STREAMED_CHAT, "messages": MESSAGES}, b'"content"'),
        ("/api/chat", {**CHAT, "messages": MESSAGES}, b'"content"'),
    ],
)
async def test_a_client_that_leaves_mid_stream_is_recorded_once_partial_with_what_it_got(
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    path: str,
    body: dict[str, Any],
    content_key: bytes,
) -> None:
    standin.gate = asyncio.Queue()
    gateway = await make_gateway(standin.url, **FAST)
    request_id = rid()
    delivered = 4
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + path, json=body, headers={"X-Request-ID": request_id}) as resp,
    ):
        assert resp.status == 200
        for _ in range(delivered):
            standin.gate.put_nowait(None)
            async with asyncio.timeout(10):
                line = await resp.content.readuntil(b"\n")
                if path.startswith("/v1/"):
                    assert await resp.content.readuntil(b"\n") == b"\n"
            assert content_key in line
            # The phone goes away: the connection closes under the stream.
    await wait_until(lambda: standin.cancelled == 1, "the upstream request cancelled")
    [record] = await recorded(gateway, [request_id])
    assert record["outcome"] == "client_disconnected"
    assert record["partial"] == 1
    assert record["completion_tokens"] == delivered
    # The request was not retried or counted again behind the client's back.
    assert len(await rows(gateway)) == 1


async def test_an_upstream_that_breaks_off_is_recorded_as_failed_with_what_was_delivered(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    standin.die_after = 3
    gateway = await make_gateway(standin.url, **FAST)
    request_id = rid()
    body = {**STREAMED_CHAT, "messages": MESSAGES}
    status, raw, _ = await post(
        http, f"{gateway.url}/v1/chat/completions", body, request_id=request_id
    )
    assert status == 200 and b"upstream_disconnected" in raw  # in-band
    [record] = await recorded(gateway, [request_id])
    assert (record["outcome"], record["partial"], record["completion_tokens"]) == (
        "upstream_failed",
        1,
        3,
    )


async def test_refusals_and_upstream_errors_are_recorded_without_tokens(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(standin.url, **FAST)
    missing, broken = rid(), rid()
    status, _, _ = await post(
        http, f"{gateway.url}/v1/chat/completions", {**CHAT, "model": "nope:1b"}, request_id=missing
    )
    assert status == 404
    standin.force_error = (500, {"error": "runner crashed"})
    status, _, _ = await post(http, f"{gateway.url}/api/chat", CHAT, request_id=broken)
    assert status == 500
    records = {r["request_id"]: r for r in await recorded(gateway, [missing, broken])}
    # A missing model is its own outcome: not the upstream's failure, which
    # fognode_upstream_failures_total does not count it as either.
    assert records[missing]["outcome"] == "model_not_found"
    assert records[broken]["outcome"] == "upstream_failed"
    async with http.get(f"{gateway.url}/metrics") as resp:
        metrics = await resp.text()
    assert 'fognode_usage_records_total{outcome="model_not_found"} 1.0' in metrics
    assert "fognode_upstream_failures_total 0.0" in metrics
    for request_id in (missing, broken):
        record = records[request_id]
        assert (record["prompt_tokens"], record["completion_tokens"], record["partial"]) == (
            0,
            0,
            0,
        )


def test_what_a_meter_charges_for_each_ending() -> None:
    meter = Meter(strip_usage_chunk=False, prompt_estimate=9)
    assert meter.tokens(Outcome.REJECTED) == Tokens(0, 0, partial=False, exact=False)
    assert meter.tokens(Outcome.CLIENT_DISCONNECTED) == Tokens(0, 0, partial=False, exact=False)
    meter.sending("http://upstream")
    # Gone while the upstream read the prompt: the prompt is charged, nothing else.
    assert meter.tokens(Outcome.CLIENT_DISCONNECTED) == Tokens(9, 0, partial=True, exact=False)
    assert meter.tokens(Outcome.UPSTREAM_FAILED) == Tokens(0, 0, partial=False, exact=False)
    counter = meter.count("text/event-stream")
    counter.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n')
    counter.delivered()
    assert meter.tokens(Outcome.CLIENT_DISCONNECTED) == Tokens(9, 1, partial=True, exact=False)


# --- many at once -------------------------------------------------------------------------


async def test_200_concurrent_streams_from_20_users_sum_exactly(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    keys = {f"user{i:02d}": new_key() for i in range(20)}
    gateway = await make_gateway(
        standin.url,
        auth="firebase",
        api_keys=[entry_for(key, name, admin=False) for name, key in keys.items()],
        api_keys_file=None,
        max_concurrent_requests=200,
        per_user_concurrent_requests=10,
        usage_flush_records=37,  # batches that do not divide the load evenly
        **FAST,
    )
    kinds = [
        ("/v1/chat/completions", {**STREAMED_CHAT, "messages": MESSAGES}, PROMPT_WORDS),
        (
            "/v1/completions",
            {"model": "llama3.2:1b", "prompt": PROMPT, "stream": True},
            PROMPT_WORDS,
        ),
        ("/api/chat", {**CHAT, "messages": MESSAGES}, 5),
        ("/api/generate", {"model": "llama3.2:1b", "prompt": PROMPT}, 5),
    ]
    plan = [(name, kinds[(n + i) % len(kinds)]) for i, name in enumerate(keys) for n in range(10)]
    standin.gate = asyncio.Queue()  # every stream open at once before any token flows
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(name: str, path: str, body: dict[str, Any]) -> int:
            status, raw, _ = await post(
                http, gateway.url + path, body, request_id=rid(), key=keys[name]
            )
            assert status == 200, raw
            return status

        tasks = [asyncio.ensure_future(one(name, path, body)) for name, (path, body, _) in plan]
        await wait_until(lambda: standin.active == 200, "200 streams open upstream", limit=60)
        for _ in range(200 * (WORDS + 3)):
            standin.gate.put_nowait(None)
        async with asyncio.timeout(120):
            await asyncio.gather(*tasks)
    writer = gateway.app[USAGE].writer
    assert writer is not None
    await wait_until(lambda: len(writer.pending()) == 0 and writer.written == 200, "200 written")
    records = await rows(gateway)
    assert len(records) == 200
    assert {r["outcome"] for r in records} == {"completed"}
    per_user: dict[str, tuple[int, int]] = {}
    for r in records:
        prompt, completion = per_user.get(r["uid"], (0, 0))
        per_user[r["uid"]] = (prompt + r["prompt_tokens"], completion + r["completion_tokens"])
    expected: dict[str, tuple[int, int]] = {}
    for name, (_, _, prompt) in plan:
        p, c = expected.get(f"apikey:{name}", (0, 0))
        expected[f"apikey:{name}"] = (p + prompt, c + WORDS)
    assert per_user == expected
    assert sum(c for _, c in per_user.values()) == 200 * WORDS


# --- quotas ----------------------------------------------------------------------------------


async def test_a_user_over_the_daily_budget_gets_429_with_headers_while_others_are_served(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    alice, bob = new_key(), new_key()
    per_request = PROMPT_WORDS + WORDS
    gateway = await make_gateway(
        standin.url,
        auth="firebase",
        api_keys=[entry_for(alice, "alice", admin=False), entry_for(bob, "bob", admin=False)],
        api_keys_file=None,
        quota_tokens_per_day=2 * per_request,
        quota_requests_per_minute=100,
        max_concurrent_requests=1,
        **FAST,
    )
    url = f"{gateway.url}/v1/chat/completions"
    body = {**STREAMED_CHAT, "messages": MESSAGES, "max_tokens": WORDS}
    remaining = []
    for _ in range(2):
        status, _, headers = await post(http, url, body, request_id=rid(), key=alice)
        assert status == 200
        assert all(name in headers for name in RATE_HEADERS), headers
        remaining.append(int(headers["x-ratelimit-remaining-tokens"]))
    # Each answer says what is left after its own estimate was deducted.
    estimate = -(-len(PROMPT) // 4) + 4 + WORDS
    assert remaining == [2 * per_request - estimate, max(0, per_request - estimate)]

    # Bob holds the node's only slot; Alice, over budget, does not wait for it.
    standin.gate = asyncio.Queue()
    bob_request = asyncio.ensure_future(post(http, url, body, request_id=rid(), key=bob))
    admission = gateway.app[ADMISSION]
    await wait_until(lambda: admission.active == 1, "Bob's request holds the slot")
    refused_id = rid()
    status, raw, headers = await post(http, url, body, request_id=refused_id, key=alice)
    assert status == 429
    error = json.loads(raw)["error"]
    assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")
    assert headers["x-ratelimit-limit-tokens"] == str(2 * per_request)
    assert headers["x-ratelimit-remaining-tokens"] == "0"
    assert 0 < int(headers["Retry-After"]) <= 86_400 and headers["x-should-retry"] == "false"
    assert admission.queued == 0  # never queued
    for _ in range(WORDS + 3):
        standin.gate.put_nowait(None)
    status, _, headers = await bob_request
    assert status == 200 and int(headers["x-ratelimit-remaining-tokens"]) > 0

    [refused] = await recorded(gateway, [refused_id])
    assert (refused["outcome"], refused["prompt_tokens"], refused["completion_tokens"]) == (
        "rejected",
        0,
        0,
    )


async def test_requests_per_minute_refuse_with_rate_limit_exceeded(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(standin.url, quota_requests_per_minute=3, **FAST)
    url = f"{gateway.url}/api/chat"
    seen = []
    for _ in range(3):
        status, _, headers = await post(http, url, CHAT, request_id=rid())
        assert status == 200
        seen.append(headers["x-ratelimit-remaining-requests"])
    assert seen == ["2", "1", "0"]
    status, raw, headers = await post(http, url, CHAT, request_id=rid())
    assert status == 429
    assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-tokens" not in headers  # no token limit set, none reported
    assert len(standin.forwarded) == 3


async def test_early_heartbeat_headers_carry_the_rate_limit_headers(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    standin.first_byte_delay = 0.6  # the model loads: headers go out early
    gateway = await make_gateway(
        standin.url,
        quota_tokens_per_day=10_000,
        stream_heartbeat_after=0.1,
        stream_heartbeat_interval=0.2,
        **FAST,
    )
    url = f"{gateway.url}/v1/chat/completions"
    async with http.post(url, json=STREAMED_CHAT) as resp:
        assert resp.status == 200
        first = await resp.content.readuntil(b"\n")
        assert first == b": keep-alive\n"  # the headers were early
        assert resp.headers["x-ratelimit-limit-tokens"] == "10000"
        assert int(resp.headers["x-ratelimit-remaining-tokens"]) < 10_000
        await resp.read()


# --- seeing it ----------------------------------------------------------------------------------


async def test_admin_usage_per_user_and_model_over_a_time_range(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    admin, user = new_key(), new_key()
    gateway = await make_gateway(
        standin.url,
        auth="firebase",
        api_keys=[entry_for(admin, "ops", admin=True), entry_for(user, "app", admin=False)],
        api_keys_file=None,
        **FAST,
    )
    ids = [rid() for _ in range(3)]
    for request_id, model in zip(ids, ["llama3.2:1b", "llama3.2:1b", "qwen2.5:0.5b"], strict=True):
        body = {**CHAT, "model": model, "messages": MESSAGES}
        assert (await post(http, f"{gateway.url}/api/chat", body, request_id=request_id, key=user))[
            0
        ] == 200
    await recorded(gateway, ids)
    report = f"{gateway.url}/admin/usage"
    async with http.get(report, headers={"Authorization": f"Bearer {user}"}) as resp:
        assert resp.status == 403
    auth_header = {"Authorization": f"Bearer {admin}"}
    async with http.get(report, headers=auth_header) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["users"] == [
        {
            "uid": "apikey:app",
            "requests": 3,
            "rejected": 0,
            "partial": 0,
            "prompt_tokens": 15,
            "completion_tokens": 3 * WORDS,
            "total_tokens": 15 + 3 * WORDS,
        }
    ]
    assert [(m["model"], m["requests"]) for m in data["models"]] == [
        ("llama3.2:1b", 2),
        ("qwen2.5:0.5b", 1),
    ]
    assert data["pending_records"] == 0
    # A range that ends before the requests: nothing.
    async with http.get(report, params={"until": "1h", "since": "2h"}, headers=auth_header) as resp:
        assert (await resp.json())["users"] == []
    async with http.get(report, params={"since": "last tuesday"}, headers=auth_header) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["param"] == "since"


async def test_token_counters_in_metrics_by_model_and_by_user_only_when_asked(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    for per_user in (False, True):
        gateway = await make_gateway(
            standin.url, metrics_public=True, usage_metrics_per_user=per_user, **FAST
        )
        request_id = rid()
        body = {**CHAT, "messages": MESSAGES}
        assert (await post(http, f"{gateway.url}/api/chat", body, request_id=request_id))[0] == 200
        await recorded(gateway, [request_id])
        async with http.get(f"{gateway.url}/metrics") as resp:
            text = await resp.text()
        labels = 'model="llama3.2:1b",uid="anonymous"' if per_user else 'model="llama3.2:1b"'
        assert f"fognode_prompt_tokens_total{{{labels}}} 5.0" in text
        assert f"fognode_completion_tokens_total{{{labels}}} {WORDS}.0" in text
        assert 'fognode_usage_records_total{outcome="completed"} 1.0' in text
        assert ("uid=" in text) is per_user


async def test_the_store_holds_no_prompt_answer_token_or_key(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    key = new_key()
    secret_prompt = "my-unique-diagnosis-" + uuid.uuid4().hex
    standin.reply = "the-unique-answer-" + uuid.uuid4().hex + " and more"
    gateway = await make_gateway(
        standin.url,
        auth="firebase",
        api_keys=[entry_for(key, "clinic", admin=False)],
        api_keys_file=None,
        **FAST,
    )
    ids = [rid(), rid()]
    for request_id, (path, body) in zip(
        ids,
        [
            (
                "/v1/chat/completions",
                {**STREAMED_CHAT, "messages": [{"role": "user", "content": secret_prompt}]},
            ),
            ("/api/generate", {"model": "llama3.2:1b", "prompt": secret_prompt, "stream": False}),
        ],
        strict=True,
    ):
        status, raw, _ = await post(http, gateway.url + path, body, request_id=request_id, key=key)
        assert status == 200 and b"the-unique-answer-" in raw
    await recorded(gateway, ids)
    await gateway.stop()  # the WAL folded into the file
    path = gateway.app[USAGE].options.store.sqlite_path
    assert path is not None
    stored = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    assert b"apikey:clinic" in stored  # the records are there, readable
    for secret in (secret_prompt, standin.reply.split()[0], key, key[4:20]):
        assert secret.encode() not in stored
    assert path.stat().st_mode & 0o077 == 0  # readable by the node's user only


async def test_accounting_off_means_no_store_no_edit_and_no_report(
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    path = tmp_path / "never.sqlite3"
    gateway = await make_gateway(standin.url, usage_accounting=False, usage_sqlite_path=path)
    status, raw, headers = await post(
        http, f"{gateway.url}/v1/chat/completions", STREAMED_CHAT, request_id=rid()
    )
    assert status == 200 and b"[DONE]" in raw
    assert b"stream_options" not in standin.last("/v1/chat/completions").body
    assert not any(name.startswith("x-ratelimit") for name in headers)
    async with http.get(f"{gateway.url}/admin/usage") as resp:
        assert resp.status == 404
    assert not path.exists()


async def test_a_store_that_cannot_open_stops_the_start_without_its_password(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    from tests.support.helpers import free_port

    url = f"postgresql://fog:sup3r-s3cret@127.0.0.1:{free_port()}/usage"
    with pytest.raises(Exception) as caught:
        await make_gateway(standin.url, usage_database_url=url)
    message = str(caught.value)
    assert "cannot open the usage store" in message and "PostgreSQL at" in message
    assert "sup3r-s3cret" not in message
