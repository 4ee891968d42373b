"""The route table: every path fognode serves, and what each stage does with it.

A route is declared once, as a :class:`RouteSpec`: who may call it (the
access stage), what its body must be (the validation stage), whether it
waits for an admission slot (the admission stage), and which compatibility
edits its answer gets (the proxy stage). The stages look the spec up for
each request; a request for a route that is not in the table is refused, so
a new route cannot forget to be protected.

Routes are grouped as the access policy sees them:

* the OpenAI-compatible API and Ollama's native inference API (any
  authenticated user),
* Ollama's model management (administrators only),
* and, registered by their own stages, the probes, metrics, the API
  document and the operator's pages (``page=True``: the only routes a
  browser session admits).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from ...auth.principal import Access
from .compat import (
    RouteEdits,
    chat_request_edit,
    chat_stream_edit,
    completion_stream_edit,
    fill_model,
    fix_chat_answer,
    fix_completion_answer,
    normalise_request,
)
from .request_models import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# A byte-level edit of the client's request body (compat.py): body, parsed body,
# upstream kind -> body to send.
RequestEdit = Callable[[bytes, dict[str, Any], str], bytes]


class Body(Enum):
    NONE = "none"  # read (within limits) but not looked at
    JSON = "json"  # a JSON object, if there is a body
    VALIDATED = "validated"  # a JSON object in the OpenAI shape of `RouteSpec.model`
    STREAMED = "streamed"  # passed through unread (model blobs can be gigabytes)


class Listing(Enum):
    """A model list (/v1/models, /api/tags, /api/ps): from several upstreams it
    is their union, keyed so."""

    OPENAI = ("data", "id")
    OLLAMA = ("models", "name")


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    access: Access
    forwarded: bool = False  # to the upstream (else answered by a handler of the gateway)
    body: Body = Body.NONE
    model: type[BaseModel] | None = None  # with Body.VALIDATED
    limited: bool = False  # inference: waits for an admission slot
    native: bool = False  # Ollama's own API (501 in front of an OpenAI-compatible server)
    changes_models: bool = False  # the node's model list is read again after it
    listing: Listing | None = None
    # One entry of that list (/v1/models/{model}): answered by the node from the
    # list for upstreams that have no such route (llama.cpp's server answers 404
    # for any name), with the one missing-model wording the app matches.
    entry_of: Listing | None = None
    # A chat: its messages send it to the upstream that served the conversation
    # before (routing/conversation.py).
    conversation: bool = False
    edits: RouteEdits = field(default_factory=RouteEdits)
    request_edit: RequestEdit | None = None
    # An operator's page (status, sign-in, their assets), not the API: a signed-in
    # browser's session cookie admits it (access.py); the API never accepts one.
    page: bool = False
    # Asked by members of the fog only, on the peer port (pipeline/peers.py):
    # never served on the phones' port.
    peer_only: bool = False


# Model names may contain slashes (hf.co/org/model:tag), hence the regex.
MODEL = "{model:.+}"

# What the SpeziLLMFog app needs (compat.py): a role on every chat delta, and
# a missing model worded one way on the inference routes; what its strictly
# decoding client needs: every field OpenAI's document requires, in answers,
# chunks, model entries and errors. Ollama's native API answers errors in its
# own shape, which its clients parse.
CHAT_EDITS = RouteEdits(
    stream_edit=chat_stream_edit, answer_edit=fix_chat_answer, reword_missing_model=True
)
COMPLETION_EDITS = RouteEdits(
    stream_edit=completion_stream_edit,
    answer_edit=fix_completion_answer,
    reword_missing_model=True,
)
INFERENCE = RouteEdits(reword_missing_model=True)
MODEL_ENTRY = RouteEdits(answer_edit=fill_model)
NATIVE_INFERENCE = RouteEdits(openai_errors=False, reword_missing_model=True)
NATIVE = RouteEdits(openai_errors=False)


def _openai(method: str, path: str, access: Access, **kwargs: Any) -> RouteSpec:
    return RouteSpec(method, path, access, forwarded=True, **kwargs)


def _native(method: str, path: str, access: Access, **kwargs: Any) -> RouteSpec:
    kwargs.setdefault("edits", NATIVE)
    return RouteSpec(method, path, access, forwarded=True, native=True, **kwargs)


OPENAI_ROUTES = (
    _openai(
        "POST",
        "/v1/chat/completions",
        Access.USER,
        body=Body.VALIDATED,
        model=ChatCompletionRequest,
        limited=True,
        conversation=True,
        edits=CHAT_EDITS,
        request_edit=chat_request_edit,
    ),
    _openai(
        "POST",
        "/v1/completions",
        Access.USER,
        body=Body.VALIDATED,
        model=CompletionRequest,
        limited=True,
        edits=COMPLETION_EDITS,
        request_edit=normalise_request,
    ),
    _openai(
        "POST",
        "/v1/embeddings",
        Access.USER,
        body=Body.VALIDATED,
        model=EmbeddingRequest,
        limited=True,
        edits=INFERENCE,
        request_edit=normalise_request,
    ),
    _openai("GET", "/v1/models", Access.USER, listing=Listing.OPENAI),
    _openai("GET", f"/v1/models/{MODEL}", Access.USER, edits=MODEL_ENTRY, entry_of=Listing.OPENAI),
)


OLLAMA_ROUTES = (
    _native(
        "POST",
        "/api/chat",
        Access.USER,
        body=Body.JSON,
        limited=True,
        conversation=True,
        edits=NATIVE_INFERENCE,
    ),
    _native(
        "POST", "/api/generate", Access.USER, body=Body.JSON, limited=True, edits=NATIVE_INFERENCE
    ),
    _native(
        "POST", "/api/embed", Access.USER, body=Body.JSON, limited=True, edits=NATIVE_INFERENCE
    ),
    _native(
        "POST", "/api/embeddings", Access.USER, body=Body.JSON, limited=True, edits=NATIVE_INFERENCE
    ),
    _native("GET", "/api/tags", Access.USER, listing=Listing.OLLAMA),
    _native("POST", "/api/show", Access.USER, body=Body.JSON),
    _native("GET", "/api/ps", Access.USER, listing=Listing.OLLAMA),
    _native("GET", "/api/version", Access.USER),
)

# The seam for the access policy: everything here changes what the node
# serves to everyone, so only administrators may call it.
MODEL_MANAGEMENT_ROUTES = (
    _native("POST", "/api/pull", Access.ADMIN, body=Body.JSON, changes_models=True),
    _native("POST", "/api/push", Access.ADMIN, body=Body.JSON),
    _native("POST", "/api/create", Access.ADMIN, body=Body.JSON, changes_models=True),
    _native("POST", "/api/copy", Access.ADMIN, body=Body.JSON, changes_models=True),
    _native("DELETE", "/api/delete", Access.ADMIN, body=Body.JSON, changes_models=True),
    _native("HEAD", "/api/blobs/{digest}", Access.ADMIN),
    _native("POST", "/api/blobs/{digest}", Access.ADMIN, body=Body.STREAMED),
)

PROXIED_ROUTES = OPENAI_ROUTES + OLLAMA_ROUTES + MODEL_MANAGEMENT_ROUTES


# --- the registry the stages read ------------------------------------------------

SpecKey = tuple[str, str]  # (method, resource canonical)
ROUTES = web.AppKey("fognode.routes", dict[SpecKey, RouteSpec])


def add_route(app: web.Application, spec: RouteSpec, handler: Handler) -> None:
    """Register a route and its spec; every route fognode serves goes through here."""
    specs = app.setdefault(ROUTES, {})
    resource = app.router.add_resource(spec.path)
    resource.add_route(spec.method, handler)
    specs[(spec.method, resource.canonical)] = spec
    levels = {s.access for (_, path), s in specs.items() if path == resource.canonical}
    if len(levels) > 1:
        raise ValueError(f"conflicting access levels for {spec.path}")


def spec_for(request: web.Request) -> RouteSpec | None:
    """The matched route's spec; None when no route matched (404/405 follow)."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    specs = request.app[ROUTES]
    key = (request.method, resource.canonical)
    return specs.get(key) or specs.get(("GET", resource.canonical) if key[0] == "HEAD" else key)


def all_specs(app: web.Application) -> list[RouteSpec]:
    return list(app.get(ROUTES, {}).values())
