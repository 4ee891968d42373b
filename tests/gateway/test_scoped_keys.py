"""Scoped API keys in the gateway: models, expiry, tier and class.

The in-process gateway in front of the Ollama stand-in (llama3.2:1b,
qwen2.5:0.5b, nomic-embed-text:latest). ``study`` may use llama3.2:1b only,
in the tier ``study`` (two requests a minute) and the class ``batch``;
``ops`` is an administrator without a scope, ``clinic`` a user without one.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from fognode.auth.api_keys import entry_for, new_key
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pipeline.admission import ADMISSION
from tests.support.gateway import GatewayFactory
from tests.support.helpers import STREAMED_CHAT, wait_until
from tests.support.ollama_standin import OllamaStandIn

KEYS = {name: new_key() for name in ("ops", "clinic", "study", "hold", "scoped-admin")}
STUDY = {"models": ("llama3.2:1b",), "tier": "study", "priority": "batch"}
SCOPE: dict[str, dict[str, Any]] = {"study": STUDY, "scoped-admin": {"models": ("llama3.2:1b",)}}


def settings(**more: Any) -> dict[str, Any]:
    entries = [
        entry_for(key, name, admin=name in ("ops", "scoped-admin"), **SCOPE.get(name, {}))
        for name, key in KEYS.items()
    ]
    return {
        "auth": "firebase",
        "api_keys": entries,
        "api_keys_file": None,
        "quota_tiers": {"study": {"requests_per_minute": 2}},
        "usage_flush_seconds": 0.02,
        **more,
    }


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


async def call(
    http: aiohttp.ClientSession,
    gateway: RunningServer,
    name: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    async with http.request(method, gateway.url + path, json=body, headers=bearer(name)) as resp:
        raw = await resp.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return resp.status, parsed, dict(resp.headers)


def chat_with(model: str, content: str = "hi") -> dict[str, Any]:
    return {**STREAMED_CHAT, "model": model, "messages": [{"role": "user", "content": content}]}


def refused_for_scope(status: int, body: Any, headers: dict[str, str], model: str) -> bool:
    """403 in OpenAI's shape, naming the scope and the model, never a key."""
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "llama3.2:1b" in error["message"] and model in error["message"]
    assert not any(key in json.dumps(body) for key in KEYS.values())
    assert "insufficient_scope" in headers["WWW-Authenticate"]
    return status == 403 and error["code"] == "model_not_in_scope"


async def test_a_scoped_key_uses_its_models_and_is_refused_every_other_on_every_route(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(standin.url, **settings())
    status, _, _ = await call(
        http, gateway, "study", "POST", "/v1/chat/completions", chat_with("llama3.2:1b")
    )
    assert status == 200
    outside: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/v1/chat/completions", chat_with("qwen2.5:0.5b")),
        ("POST", "/v1/completions", {"model": "qwen2.5:0.5b", "prompt": "hi"}),
        ("POST", "/v1/embeddings", {"model": "nomic-embed-text:latest", "input": "hi"}),
        ("GET", "/v1/models/qwen2.5:0.5b", None),
        ("POST", "/api/chat", {"model": "qwen2.5:0.5b", "messages": []}),
        ("POST", "/api/generate", {"model": "qwen2.5:0.5b", "prompt": "hi"}),
        ("POST", "/api/embed", {"model": "nomic-embed-text:latest", "input": "hi"}),
        ("POST", "/api/show", {"name": "qwen2.5:0.5b"}),
        # A model nobody has: outside the scope is the answer, not "not found".
        ("POST", "/v1/chat/completions", chat_with("phi4:14b")),
    ]
    for method, path, body in outside:
        status, answer, headers = await call(http, gateway, "study", method, path, body)
        model = path.rsplit("/", 1)[-1] if body is None else (body.get("model") or body["name"])
        assert refused_for_scope(status, answer, headers, model), (path, status, answer)
    # Nothing refused reached the upstream, and nothing was counted against the key.
    assert [r.path for r in standin.forwarded] == ["/v1/chat/completions"]
    # The same requests from a key without a scope go through.
    status, _, _ = await call(
        http, gateway, "clinic", "POST", "/v1/chat/completions", chat_with("qwen2.5:0.5b")
    )
    assert status == 200


async def test_a_scoped_key_lists_only_its_models(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(standin.url, **settings())
    standin.load("llama3.2:1b")
    standin.load("qwen2.5:0.5b")
    status, listed, _ = await call(http, gateway, "study", "GET", "/v1/models")
    assert status == 200 and [m["id"] for m in listed["data"]] == ["llama3.2:1b"]
    assert listed["object"] == "list"
    for path in ("/api/tags", "/api/ps"):
        status, listed, _ = await call(http, gateway, "study", "GET", path)
        assert status == 200 and [m["name"] for m in listed["models"]] == ["llama3.2:1b"], path
    status, entry, _ = await call(http, gateway, "study", "GET", "/v1/models/llama3.2:1b")
    assert status == 200 and entry["id"] == "llama3.2:1b"
    # Everyone else sees every model, as Ollama lists them.
    status, listed, _ = await call(http, gateway, "clinic", "GET", "/api/tags")
    assert len(listed["models"]) == 3
    status, listed, _ = await call(http, gateway, "clinic", "GET", "/v1/models")
    assert len(listed["data"]) == 3


async def test_a_scoped_admin_key_manages_no_models(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gateway = await make_gateway(standin.url, **settings())
    status, answer, _ = await call(
        http, gateway, "scoped-admin", "POST", "/api/pull", {"model": "llama3.2:1b"}
    )
    assert status == 403 and answer["error"]["code"] == "model_not_in_scope"
    assert "--models" in answer["error"]["message"]
    status, answer, _ = await call(
        http, gateway, "scoped-admin", "DELETE", "/api/delete", {"model": "qwen2.5:0.5b"}
    )
    assert status == 403
    assert not [r for r in standin.forwarded if r.path.startswith("/api/")]


async def test_a_key_is_refused_once_it_expired_without_a_reload(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    trial = new_key()
    ends = float(int(time.time()) + 2)
    gateway = await make_gateway(
        standin.url,
        **settings(api_keys=[entry_for(trial, "trial", admin=False, expires=ends)]),
    )
    headers = {"Authorization": f"Bearer {trial}"}

    async def status() -> tuple[int, dict[str, Any], dict[str, str]]:
        async with http.get(gateway.url + "/v1/models", headers=headers) as resp:
            return resp.status, await resp.json(), dict(resp.headers)

    assert (await status())[0] == 200
    while time.time() < ends:  # noqa: ASYNC110 (the key's own time, not an event)
        await asyncio.sleep(0.1)
    code, body, answered = await status()
    assert code == 401 and body["error"]["code"] == "api_key_expired"
    assert "expired at" in body["error"]["message"] and trial not in json.dumps(body)
    assert 'error="invalid_token"' in answered["WWW-Authenticate"]


async def test_a_keys_tier_and_class_drive_its_budget_and_its_place_in_the_queue(
    standin: OllamaStandIn, make_gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    standin.gate = asyncio.Queue()  # the first request holds the one slot
    gateway = await make_gateway(
        standin.url, **settings(max_concurrent_requests=1, per_user_concurrent_requests=1)
    )
    admission = gateway.app[ADMISSION]
    tasks = [
        asyncio.ensure_future(
            call(http, gateway, "hold", "POST", "/v1/chat/completions", chat_with("qwen2.5:0.5b"))
        )
    ]
    await wait_until(lambda: standin.active == 1, "the slot taken")
    for queued, name in enumerate(("study", "clinic"), 1):
        body = chat_with("llama3.2:1b", name)
        tasks.append(
            asyncio.ensure_future(call(http, gateway, name, "POST", "/v1/chat/completions", body))
        )
        await wait_until(lambda n=queued: admission.queued == n, f"{name} queued")
    gate, standin.gate = standin.gate, None
    for _ in range(100):
        gate.put_nowait(None)
    assert [status for status, _, _ in await asyncio.gather(*tasks)] == [200] * 3
    order = [json.loads(r.body)["messages"][0]["content"] for r in standin.forwarded]
    assert order == ["hi", "clinic", "study"]  # the key's class is batch
    # Its tier's budget: two requests a minute, the second of them above.
    status, usage, _ = await call(http, gateway, "study", "GET", "/v1/fognode/usage")
    assert status == 200 and (usage["tier"], usage["class"]) == ("study", "batch")
    assert usage["requests"]["limit"] == 2
    statuses = [
        (await call(http, gateway, "study", "POST", "/v1/chat/completions", chat_with(m)))[0]
        for m in ("llama3.2:1b", "llama3.2:1b")
    ]
    assert statuses == [200, 429]
    # An administrator asking about the key sees the key's own tier and class.
    status, usage, _ = await call(
        http, gateway, "ops", "GET", "/v1/fognode/usage?user=apikey:study"
    )
    assert status == 200 and (usage["tier"], usage["class"]) == ("study", "batch")
    assert "note" not in usage


@pytest.mark.parametrize("kind", ["file", "setting"])
async def test_entries_of_before_scopes_still_work(
    kind: str,
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    tmp_path: Any,
) -> None:
    old = new_key()
    line = entry_for(old, "old", admin=False)
    assert " " not in line  # the form every existing key file and setting has
    where: dict[str, Any] = {"api_keys": [line]}
    if kind == "file":
        (tmp_path / "keys").write_text(f"# made before scopes\n{line}\n")
        where = {"api_keys": [], "api_keys_file": tmp_path / "keys"}
    gateway = await make_gateway(standin.url, **{**settings(), **where})
    async with http.get(
        gateway.url + "/v1/models", headers={"Authorization": f"Bearer {old}"}
    ) as resp:
        assert resp.status == 200 and len((await resp.json())["data"]) == 3
