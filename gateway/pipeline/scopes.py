"""The scope stage: an API key made for some models uses those and no other.

A key handed to a study's app or a teammate's script may be made with
``--models`` (auth/api_keys.py); its caller carries the list
(``Principal.models``). Here, after the body is read (the model is known)
and before anything counts or queues the request, a request that names a
model outside the list is refused: 403 in OpenAI's shape, naming the
models the key may use and never the key. That holds for every route that
names a model: the OpenAI API, Ollama's native API (``model``, or the
older ``name``), one model's entry (``/v1/models/{model}``). Managing the
node's models changes them for everyone, beyond any key's models: a scoped
key is refused there whatever it names.

The lists of models (``/v1/models``, ``/api/tags``, ``/api/ps``) show such a
caller only its models: the proxy filters them with :func:`keep_in_scope`.

In a fog the entry node decides: it knows the key; a member takes the
entry's assertion of the caller (pipeline/peers.py), which carries no
scope, and serves what the entry let through.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler

from ...auth.principal import Access
from ...routing.holders import model_key, model_keys
from ..core.errors import GatewayError
from ..core.keys import FORWARDED, PRINCIPAL
from .routes import spec_for
from .validation import REQUEST_BODY

SCOPE_HEADERS = {
    "WWW-Authenticate": 'Bearer realm="fognode", error="insufficient_scope", '
    'error_description="model_not_in_scope"'
}


def in_scope(model: str, models: Sequence[str]) -> bool:
    """Names compare as the upstreams resolve them (routing/holders.py): a
    key for ``llama3.2`` may use ``llama3.2:latest``."""
    return model_key(model) in model_keys(models)


def scope_of(request: web.Request) -> tuple[str, ...] | None:
    """The models the caller may use; None: every one."""
    principal = request.get(PRINCIPAL)
    return principal.models if principal is not None else None


def keep_in_scope(
    listing: dict[str, object], key: str, id_field: str, models: Sequence[str]
) -> dict[str, object]:
    """A model list (OpenAI's ``data`` or Ollama's ``models``) with only the
    caller's models in it."""
    entries = listing.get(key)
    if isinstance(entries, list):
        allowed = model_keys(models)  # once for the list, not once per entry
        listing[key] = [
            e
            for e in entries
            if isinstance(e, dict)
            and isinstance(e.get(id_field), str)
            and model_key(e[id_field]) in allowed
        ]
    return listing


def _refused(message: str) -> GatewayError:
    return GatewayError(
        403,
        message,
        type="permission_error",
        param="model",
        code="model_not_in_scope",
        headers=SCOPE_HEADERS,
    )


def setup_scopes(app: web.Application) -> None:
    @web.middleware
    async def scope(request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = spec_for(request)
        models = scope_of(request)
        if spec is None or not spec.forwarded or models is None or FORWARDED in request:
            return await handler(request)
        shown = ", ".join(models)
        if spec.access is Access.ADMIN:
            raise _refused(
                f"This API key may use only the models {shown}; managing the node's models "
                "needs a key made without --models."
            )
        body = request.get(REQUEST_BODY)
        named = [body.model] if body is not None and body.model else []
        parsed = body.parsed if body is not None else None
        if parsed is not None and isinstance(parsed.get("name"), str):
            named.append(parsed["name"])  # Ollama's older field, still read by /api/show
        for model in named:
            if not in_scope(model, models):
                raise _refused(
                    f"This API key may use only the models {shown}; {model[:200]!r} is not one of "
                    "them."
                )
        return await handler(request)

    app.middlewares.append(scope)
