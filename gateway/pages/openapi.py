"""fognode's own OpenAPI document, built from the route table and request models.

Served at /openapi.json so clients and fuzzers (schemathesis) see exactly
what the gateway accepts. Request bodies of the OpenAI routes come from the
pydantic models that validate them; every route documents the gateway's own
errors with the OpenAI error schema. Bodies that come from Ollama are
described loosely (any JSON), since they are Ollama's to define.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from ...auth.principal import Access
from .. import __version__
from ..pipeline.routes import Body, RouteSpec, add_route, all_specs

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_ERRORS = {
    "400": "Invalid request (OpenAI error body)",
    "401": "Missing or invalid credentials",
    "403": "A policy rule refused the caller",
    "404": "Unknown route, or (from Ollama) a model that is not on the node",
    "413": "Body too large",
    "429": "The user has too many requests running",
    "502": "Ollama unreachable",
    "503": "Node busy, or token verification unavailable",
    "504": "Ollama timed out",
}


def _operation(route: RouteSpec, components: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.method.lower()
        + "".join(c if c.isalnum() else "_" for c in route.path.replace(":.+", "")),
        "responses": {
            "200": {
                "description": "Ollama's answer, relayed as it arrives",
                "content": {
                    "application/json": {"schema": {}},
                    "text/event-stream": {"schema": {"type": "string"}},
                    "application/x-ndjson": {"schema": {"type": "string"}},
                },
            },
            **{
                code: {
                    "description": text,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
                for code, text in _ERRORS.items()
            },
        },
    }
    if route.access is not Access.PUBLIC:
        op["security"] = [{"bearer": []}]
    model = route.model
    if model is not None:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            components[name] = definition
        components[model.__name__] = schema
        op["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    elif route.method in ("POST", "DELETE") and route.body is not Body.STREAMED:
        op["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    params = []
    if "{model" in route.path:
        params.append(
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    if "{digest}" in route.path:
        params.append(
            {"name": "digest", "in": "path", "required": True, "schema": {"type": "string"}}
        )
    if params:
        op["parameters"] = params
    return op


def build_document(routes: Iterable[RouteSpec]) -> dict[str, Any]:
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, Any] = {}
    for route in routes:
        path = route.path.replace("{model:.+}", "{model}")
        paths.setdefault(path, {})[route.method.lower()] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fognode",
            "version": __version__,
            "description": "OpenAI- and Ollama-compatible gateway of a LAN fog node.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Firebase ID token or fognode API key",
                }
            },
        },
    }


def setup_openapi(app: web.Application) -> None:
    """Serve /openapi.json, built once the app starts from every route registered."""
    document: dict[str, Any] = {}

    async def build(app: web.Application) -> None:
        document.update(build_document(s for s in all_specs(app) if not s.page))

    async def openapi_handler(request: web.Request) -> web.Response:
        return web.json_response(document)

    add_route(app, RouteSpec("GET", "/openapi.json", Access.PUBLIC), openapi_handler)
    app.on_startup.append(build)
