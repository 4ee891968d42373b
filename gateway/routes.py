"""The route table: every path fognode serves, its access level and handler.

Routes are grouped as the access policy sees them:

* public probes (no credentials, never touch the upstream's models),
* the OpenAI-compatible API and Ollama's native inference API (any
  authenticated user),
* Ollama's model management (administrators only).

Keeping the table in one place makes the access level of each path
reviewable at a glance, and the access middleware refuses any route that is
missing from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .access import ACCESS_BY_ROUTE, Access
from .compat import add_max_tokens, fill_assistant_role
from .errors import GatewayError
from .health import healthz, readyz
from .metrics import metrics_handler
from .openapi import openapi_handler
from .proxy import Handler, forward, forward_listing
from .relay import RouteEdits
from .request_models import ChatCompletionRequest, CompletionRequest, EmbeddingRequest


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: Access


# Model names may contain slashes (hf.co/org/model:tag), hence the regex.
MODEL = "{model:.+}"

# What the SpeziLLMFog app needs (compat.py): a role on every chat delta, and
# a missing model worded one way on the inference routes. Ollama's native API
# answers errors in its own shape, which its clients parse.
CHAT_EDITS = RouteEdits(sse_line_edit=fill_assistant_role, reword_missing_model=True)
INFERENCE = RouteEdits(reword_missing_model=True)
NATIVE_INFERENCE = RouteEdits(openai_errors=False, reword_missing_model=True)
NATIVE = RouteEdits(openai_errors=False)

PUBLIC_ROUTES = (
    Route("GET", "/healthz", healthz, Access.PUBLIC),
    Route("GET", "/readyz", readyz, Access.PUBLIC),
)

OPENAI_ROUTES = (
    Route(
        "POST",
        "/v1/chat/completions",
        forward(
            model=ChatCompletionRequest,
            limited=True,
            edits=CHAT_EDITS,
            request_edit=add_max_tokens,
        ),
        Access.USER,
    ),
    Route(
        "POST",
        "/v1/completions",
        forward(model=CompletionRequest, limited=True, edits=INFERENCE),
        Access.USER,
    ),
    Route(
        "POST",
        "/v1/embeddings",
        forward(model=EmbeddingRequest, limited=True, edits=INFERENCE),
        Access.USER,
    ),
    Route("GET", "/v1/models", forward_listing("data", "id"), Access.USER),
    Route("GET", f"/v1/models/{MODEL}", forward(), Access.USER),
)

OLLAMA_ROUTES = (
    Route(
        "POST",
        "/api/chat",
        forward(json_body=True, limited=True, edits=NATIVE_INFERENCE),
        Access.USER,
    ),
    Route(
        "POST",
        "/api/generate",
        forward(json_body=True, limited=True, edits=NATIVE_INFERENCE),
        Access.USER,
    ),
    Route(
        "POST",
        "/api/embed",
        forward(json_body=True, limited=True, edits=NATIVE_INFERENCE),
        Access.USER,
    ),
    Route(
        "POST",
        "/api/embeddings",
        forward(json_body=True, limited=True, edits=NATIVE_INFERENCE),
        Access.USER,
    ),
    Route("GET", "/api/tags", forward_listing("models", "name"), Access.USER),
    Route("POST", "/api/show", forward(json_body=True, edits=NATIVE), Access.USER),
    Route("GET", "/api/ps", forward(edits=NATIVE), Access.USER),
    Route("GET", "/api/version", forward(edits=NATIVE), Access.USER),
)

# The seam for the access policy: everything here changes what the node
# serves to everyone, so only administrators may call it.
MODEL_MANAGEMENT_ROUTES = (
    Route("POST", "/api/pull", forward(json_body=True, edits=NATIVE), Access.ADMIN),
    Route("POST", "/api/push", forward(json_body=True, edits=NATIVE), Access.ADMIN),
    Route("POST", "/api/create", forward(json_body=True, edits=NATIVE), Access.ADMIN),
    Route("POST", "/api/copy", forward(json_body=True, edits=NATIVE), Access.ADMIN),
    Route("DELETE", "/api/delete", forward(json_body=True, edits=NATIVE), Access.ADMIN),
    Route("HEAD", "/api/blobs/{digest}", forward(edits=NATIVE), Access.ADMIN),
    Route("POST", "/api/blobs/{digest}", forward(stream_body=True, edits=NATIVE), Access.ADMIN),
)

ALL_ROUTES = PUBLIC_ROUTES + OPENAI_ROUTES + OLLAMA_ROUTES + MODEL_MANAGEMENT_ROUTES


async def native_api_unavailable(request: web.Request) -> web.StreamResponse:
    raise GatewayError(
        501,
        f"{request.path} is Ollama's native API, and this node's upstream is an "
        "OpenAI-compatible server (FOGNODE_UPSTREAM_KIND=openai): use the /v1 API.",
        code="native_api_unavailable",
    )


NATIVE_PATHS = frozenset(r.path for r in OLLAMA_ROUTES + MODEL_MANAGEMENT_ROUTES)


def add_routes(
    app: web.Application,
    routes: tuple[Route, ...] = ALL_ROUTES,
    *,
    metrics_access: Access = Access.ADMIN,
    upstream_kind: str = "ollama",
) -> None:
    access: dict[str, Access] = {}
    # Metrics show load and usage of the whole node: administrators (or a
    # scraper with an admin API key) unless the operator makes them public.
    extra = (
        Route("GET", "/metrics", metrics_handler, metrics_access),
        Route("GET", "/openapi.json", openapi_handler, Access.PUBLIC),
    )
    for route in (*routes, *extra):
        resource = app.router.add_resource(route.path)
        handler = route.handler
        if upstream_kind != "ollama" and route.path in NATIVE_PATHS:
            handler = native_api_unavailable
        resource.add_route(route.method, handler)
        if access.setdefault(resource.canonical, route.access) is not route.access:
            raise ValueError(f"conflicting access levels for {route.path}")
    app[ACCESS_BY_ROUTE] = access
