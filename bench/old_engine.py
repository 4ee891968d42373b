"""The embedded engine fognode had before llama.cpp's own server: one process of
llama-cpp-python's OpenAI-compatible server, as its child module ran it.

    <venv>/bin/python bench/old_engine.py MODEL.gguf ALIAS PORT THREADS CONTEXT [CHAT_FORMAT]

Run by bench/embedded.py with the interpreter of a scratch venv that has
llama-cpp-python[server] (the project no longer installs it); it imports
nothing of fognode. Like the old child it serves ``create_app`` with uvicorn,
one request at a time (``interrupt_requests`` off, so a waiting request
never cuts a running stream), no sse-starlette pings, and answers the model
list without the lock the app holds for a whole generation (the gateway's
checks would otherwise wait for every answer in progress).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def listing_without_lock(app: App, alias: str) -> App:
    entry = {"id": alias, "object": "model", "owned_by": "me", "permissions": []}
    body = json.dumps({"object": "list", "data": [entry]}).encode()

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/v1/models":
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return serve


def main(argv: list[str]) -> None:
    model, alias, port, threads, context, *rest = argv
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    server = ServerSettings(
        host="127.0.0.1", port=int(port), interrupt_requests=False, disable_ping_events=True
    )
    settings = ModelSettings(
        model=model,
        model_alias=alias,
        chat_format=rest[0] if rest else None,
        n_ctx=int(context),
        n_threads=int(threads),
        n_threads_batch=int(threads),
    )
    app = create_app(server_settings=server, model_settings=[settings])
    uvicorn.run(
        listing_without_lock(app, alias), host="127.0.0.1", port=int(port), log_level="warning"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
