"""The model check: a request for a model the node does not have is answered at once.

Before it, such a request went through the queue like real work: on a busy
node it waited (8.8 s measured), a streamed one got its 200 headers and
heartbeats, and the upstream's 404 then arrived inside the stream, where the
SpeziLLMFog app shows a generic error instead of "model not found". Here,
after the body is read (the model is known) and the usage stage has opened
its record, before admission, an inference request whose model no upstream
has gets a plain 404 with the app's wording (compat.py): the status the app
matches, no queue, no tokens (the usage record says ``model_not_found``).

Who has which model is the pool's to say (:meth:`UpstreamPool.who_serves`,
the same lists routing uses); the stage only asks. When nobody can know
(no upstream has listed its models) the request goes on, and the upstream's
own answer decides as before. In a fog the members are asked too
(:meth:`FogPeers.has`): a model some member has is never a 404 here, and
placement hands the request to that member.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from ...routing.holders import Holders
from ..core.errors import GatewayError
from ..core.keys import FAILURE
from .compat import model_not_found_message, native_error_body
from .quotas import METER
from .routes import spec_for
from .validation import REQUEST_BODY

# Who among this node's upstreams can serve model m (the pool's answer).
WhoServes = Callable[[str], Awaitable[Holders]]


def setup_model_check(
    app: web.Application, who_serves: WhoServes, elsewhere: Callable[[str], bool] | None = None
) -> None:
    """``elsewhere``: whether another node serves the model (a member of the
    fog has it: placement hands the request there, so it is no 404 here)."""

    @web.middleware
    async def model_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = spec_for(request)
        body = request.get(REQUEST_BODY)
        if spec is None or not spec.limited or body is None or not body.model:
            return await handler(request)
        if not (await who_serves(body.model)).missing:
            return await handler(request)
        if elsewhere is not None and elsewhere(body.model):
            return await handler(request)
        message = model_not_found_message(body.model)
        if not spec.edits.openai_errors:  # Ollama's native API: its own error shape
            request[FAILURE] = message
            meter = request.get(METER)
            if meter is not None:
                meter.model_not_found = True  # the usage record's outcome (as for a raise)
            return web.Response(
                status=404, body=native_error_body(message), content_type="application/json"
            )
        raise GatewayError(404, message, type="not_found_error", code="model_not_found")

    app.middlewares.append(model_check)
