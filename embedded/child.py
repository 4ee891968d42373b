"""Entry point of a llama.cpp server child: die with the parent, then serve.

fognode starts ``python -m fognode.embedded.child PARENT_PID CONFIG_JSON``.
Before anything is loaded, this asks the kernel to kill the process when the
thread that started it goes away (PR_SET_PDEATHSIG), so a fognode that is
killed with SIGKILL, or crashes, leaves no model server behind holding memory
and a port. Doing it here rather than in a ``preexec_fn`` keeps fognode's
own process creation free of Python code between fork and exec, which is
unsafe in a process with threads.

The server is llama-cpp-python's own app (``create_app``, as its
``python -m llama_cpp.server`` builds it), served by uvicorn, with one
change in front: ``GET /v1/models`` is answered without taking the model's
lock. The app holds that lock for the whole of a generation, so its model
list (which the gateway uses for health checks, /readyz and mDNS, and which
phones ask for) would otherwise wait for the answer in progress.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

PR_SET_PDEATHSIG = 1

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before prctl took effect: then nobody would
    # signal us, so check once by hand.
    if os.getppid() != parent_pid:
        sys.exit(0)


class ModelListWithoutLock:
    """ASGI wrapper: the model list from the configuration, everything else to the app."""

    def __init__(self, app: ASGIApp, alias: str) -> None:
        self.app = app
        self.alias = alias
        entry = {"id": alias, "object": "model", "owned_by": "me", "permissions": []}
        self.listing = json.dumps({"object": "list", "data": [entry]}).encode()
        self.entry = json.dumps(entry).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path == "/v1/models":
                return await self._json(send, 200, self.listing)
            if path == f"/v1/models/{self.alias}":
                return await self._json(send, 200, self.entry)
        await self.app(scope, receive, send)

    @staticmethod
    async def _json(send: Send, status: int, body: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python -m fognode.embedded.child PARENT_PID CONFIG_JSON")
    die_with_parent(int(argv[0]))
    config = json.loads(argv[1])

    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    server = ServerSettings(**config["server"])
    model = ModelSettings(**config["model"])
    app = create_app(server_settings=server, model_settings=[model])  # loads the model
    uvicorn.run(
        ModelListWithoutLock(app, model.model_alias or model.model),
        host=server.host,
        port=server.port,
        log_level="info",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
