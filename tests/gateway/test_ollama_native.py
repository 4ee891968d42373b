"""Ollama's native API passes through; model management sits behind the admin seam."""

from __future__ import annotations

import json

import aiohttp
import pytest

from fognode.auth.errors import PolicyError
from fognode.auth.principal import Access, Principal
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pipeline.routes import MODEL_MANAGEMENT_ROUTES, ROUTES
from tests.support.gateway import GatewayFactory
from tests.support.ollama_standin import VERSIONS, OllamaStandIn

NATIVE_CALLS = [
    ("POST", "/api/generate", {"model": "llama3.2:1b", "prompt": "hi", "stream": False}),
    (
        "POST",
        "/api/chat",
        {"model": "llama3.2:1b", "stream": False, "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("POST", "/api/embed", {"model": "nomic-embed-text", "input": ["a", "b"]}),
    ("POST", "/api/embeddings", {"model": "nomic-embed-text", "prompt": "a"}),
    ("GET", "/api/tags", None),
    ("POST", "/api/show", {"model": "llama3.2:1b"}),
    ("GET", "/api/ps", None),
    ("GET", "/api/version", None),
]


@pytest.mark.parametrize(("method", "path", "body"), NATIVE_CALLS, ids=[c[1] for c in NATIVE_CALLS])
async def test_native_route_answers_exactly_as_ollama(
    gateway: RunningServer,
    standin: OllamaStandIn,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: dict[str, object] | None,
) -> None:
    async with http.request(method, gateway.url + path, json=body) as via:
        via_status, via_body = via.status, await via.json()
    async with http.request(method, standin.url + path, json=body) as direct:
        direct_status, direct_body = direct.status, await direct.json()
    assert via_status == direct_status == 200
    # created_at timestamps differ between two generations; everything else matches.
    for doc in (via_body, direct_body):
        doc.pop("created_at", None)
    assert via_body == direct_body
    assert standin.forwarded[0].path == path


async def test_native_streaming_generate(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{gateway.url}/api/generate", json={"model": "llama3.2:1b", "prompt": "hi"}
    ) as resp:
        lines = [json.loads(x) for x in (await resp.read()).splitlines()]
    assert "".join(x["response"] for x in lines) == standin.reply
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] > 0


async def test_version_is_ollamas(gateway: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{gateway.url}/api/version") as resp:
        assert await resp.json() == {"version": VERSIONS["current"]}


def test_model_management_routes_are_admin_only_in_the_route_table() -> None:
    paths = {r.path for r in MODEL_MANAGEMENT_ROUTES}
    assert {"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"} <= paths
    assert all(r.access is Access.ADMIN for r in MODEL_MANAGEMENT_ROUTES)


class _UsersButNoAdmins:
    """An authorizer as the auth step will plug in: users pass, admin routes don't."""

    async def authorize(self, authorization: str | None, access: Access) -> Principal:
        if access is Access.ADMIN:
            raise PolicyError("admin_required", "model management needs the admin claim")
        return Principal(uid="alice", kind="test")

    def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/pull", {"model": "llama3.2:1b"}),
        ("POST", "/api/push", {"model": "llama3.2:1b"}),
        ("POST", "/api/create", {"model": "mine", "from": "llama3.2:1b"}),
        ("POST", "/api/copy", {"source": "llama3.2:1b", "destination": "x"}),
        ("DELETE", "/api/delete", {"model": "llama3.2:1b"}),
        ("HEAD", "/api/blobs/sha256:abc", None),
        ("POST", "/api/blobs/sha256:abc", None),
    ],
)
async def test_admin_seam_guards_model_management(
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: dict[str, object] | None,
) -> None:
    gateway = await make_gateway(standin.url, authorizer=_UsersButNoAdmins())
    async with http.request(method, gateway.url + path, json=body) as resp:
        assert resp.status == 403
    async with http.get(f"{gateway.url}/api/tags") as resp:
        assert resp.status == 200
    assert [r.path for r in standin.forwarded] == ["/api/tags"]


async def test_model_management_passes_for_admins(
    gateway: RunningServer, standin: OllamaStandIn, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gateway.url}/api/pull", json={"model": "llama3.2:1b"}) as resp:
        statuses = [json.loads(x)["status"] for x in (await resp.read()).splitlines()]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    async with http.delete(f"{gateway.url}/api/delete", json={"model": "llama3.2:1b"}) as resp:
        assert resp.status == 200
    payload = b"GGUF" + bytes(range(256)) * 64
    async with http.post(f"{gateway.url}/api/blobs/sha256:abc", data=payload) as resp:
        assert resp.status == 201
    assert standin.last("/api/blobs/sha256:abc").body == payload


@pytest.mark.parametrize(
    "body",
    [{"model": {}}, {"model": ["llama3.2:1b", None]}, {"name": 7}],
    ids=["object", "array", "number"],
)
async def test_a_model_of_the_wrong_type_is_ollamas_400(
    gateway: RunningServer, http: aiohttp.ClientSession, body: object
) -> None:
    """What schemathesis found: Ollama decodes the body into a Go struct, so a
    model that is not a string is its 400 in its own shape, not a 500."""
    async with http.post(f"{gateway.url}/api/pull", json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error.startswith("json: cannot unmarshal ")


async def test_every_route_has_an_access_level(gateway: RunningServer) -> None:
    table = {path: spec.access for (_, path), spec in gateway.app[ROUTES].items()}
    for resource in gateway.app.router.resources():
        assert resource.canonical in table, resource.canonical
    assert table["/healthz"] is Access.PUBLIC
    assert table["/v1/chat/completions"] is Access.USER
