"""A node's model management routes, over HTTPS with the node's CA.

Every failure becomes a `NodeError` whose message says what to do and
whose exit code tells scripts what kind of failure it was (the same codes
as `fognode chat`).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

EXIT_ERROR, EXIT_UNREACHABLE, EXIT_TLS, EXIT_AUTH, EXIT_MODEL = 1, 3, 4, 5, 6
EXIT_UNSUPPORTED = 7  # the node cannot manage models (no Ollama behind it)
# The node's code for Ollama's routes in front of anything else.
NO_OLLAMA = "native_api_unavailable"

# What Ollama says when the registry has no such model (server/images.go).
NOT_IN_REGISTRY = "file does not exist"


class NodeError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NoModelManagement(NodeError):
    """The node has no Ollama behind it (its embedded model, or an
    OpenAI-compatible server): nothing to pull or remove through it. The
    message is the node's, which says which and what a pull needs."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_UNSUPPORTED)


@dataclass(frozen=True)
class NodeOptions:
    url: str  # https://host:port of the node
    ca_file: Path | None  # the node's CA; None: the system's trust store
    credential: str | None  # admin API key or a Firebase admin's ID token
    # The name to check in the node's certificate and to send as Host, when
    # the URL has an address the certificate does not carry.
    server_name: str | None = None
    connect_timeout: float = 10.0
    # Longest silence between two lines (Ollama reports a pull every 60 ms).
    read_timeout: float = 300.0


def _message(body: bytes) -> str:
    """The error text of a gateway (OpenAI shape) or Ollama ({"error": "..."}) body."""
    return _error(body)[0]


def _error(body: bytes) -> tuple[str, str | None]:
    """The error text and, in the gateway's shape, its code."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()[:300], None
    if isinstance(error, dict):
        code = error.get("code")
        return str(error.get("message", error)), code if isinstance(code, str) else None
    return str(error), None


class ModelAdmin:
    """`async with ModelAdmin(options) as node:` then list, pull, delete."""

    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ModelAdmin:
        opts = self.options
        context = ssl.create_default_context(cafile=str(opts.ca_file) if opts.ca_file else None)
        headers = {}
        if opts.credential:
            headers["Authorization"] = f"Bearer {opts.credential}"
        if opts.server_name:
            headers["Host"] = opts.server_name
        self._session = aiohttp.ClientSession(
            opts.url.rstrip("/"),
            connector=aiohttp.TCPConnector(ssl=context),
            headers=headers,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=opts.connect_timeout, sock_read=opts.read_timeout
            ),
        )
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        assert self._session is not None, "use `async with ModelAdmin(...)`"
        try:
            return await self._session.request(
                method, path, server_hostname=self.options.server_name, **kwargs
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise NodeError(
                f"TLS failed: {exc.certificate_error}. Is --ca the node's CA (fognode certs "
                "export), and does its certificate carry the name in --url (or --server-name)?",
                EXIT_TLS,
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise NodeError(f"TLS failed: {exc}", EXIT_TLS) from None
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise NodeError(
                f"Cannot reach the node at {self.options.url} ({exc or type(exc).__name__}). "
                "Is fognode serving there? (--url, or FOGNODE_URL)",
                EXIT_UNREACHABLE,
            ) from None

    async def _check(self, resp: aiohttp.ClientResponse, model: str | None = None) -> None:
        if resp.status < 400:
            return
        message, code = _error(await resp.read())
        resp.release()
        if resp.status == 501 and code == NO_OLLAMA:
            raise NoModelManagement(message)
        if resp.status == 401:
            raise NodeError(
                f"401: the node refused the credentials ({message}). Pass an admin API key "
                "(--api-key or FOGNODE_API_KEY) or a Firebase admin's ID token (--token).",
                EXIT_AUTH,
            )
        if resp.status == 403:
            raise NodeError(
                f"403: {message}. Model management needs an administrator: an API key made "
                "with `fognode apikey create NAME --admin`, or a Firebase user with the admin "
                "claim (`fognode claims set USER --admin`).",
                EXIT_AUTH,
            )
        if resp.status == 404 and model is not None:
            raise NodeError(f"Model {model!r} is not on the node ({message}).", EXIT_MODEL)
        raise NodeError(f"The node answered {resp.status}: {message}")

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = await self._request(method, path, **kwargs)
        async with resp:
            await self._check(resp)
            try:
                return await resp.json(content_type=None)
            except ValueError:
                raise NodeError(f"The node's answer to {path} is not JSON") from None

    async def models(self) -> list[dict[str, Any]]:
        """The node's models (`/api/tags`), each with `loaded` from `/api/ps`;
        raises NoModelManagement on a node without Ollama (``openai_models``)."""
        tags = (await self._json("GET", "/api/tags")).get("models", [])
        running = (await self._json("GET", "/api/ps")).get("models", [])
        loaded = {m.get("name") or m.get("model") for m in running}
        return [dict(m, loaded=(m.get("name") or m.get("model")) in loaded) for m in tags]

    async def openai_models(self) -> list[str]:
        """The names the node serves (`/v1/models`), whatever is behind it."""
        listing = (await self._json("GET", "/v1/models")).get("data", [])
        return [str(m["id"]) for m in listing if isinstance(m, dict) and "id" in m]

    async def delete(self, model: str) -> None:
        resp = await self._request("DELETE", "/api/delete", json={"model": model})
        async with resp:
            await self._check(resp, model)

    async def pull(self, model: str, *, insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Ollama's status lines, as they come.

        Leaving the loop early (Ctrl-C, an error) closes the connection, which
        the gateway passes on to Ollama, which stops downloading.
        """
        body: dict[str, Any] = {"model": model, "stream": True}
        if insecure:
            body["insecure"] = True
        resp = await self._request("POST", "/api/pull", json=body)
        try:
            await self._check(resp, model)
            while True:
                try:
                    raw = await resp.content.readline()
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                    raise NodeError(f"The node broke off the pull: {exc}") from None
                except TimeoutError:
                    raise NodeError(
                        f"The node sent nothing for {self.options.read_timeout:g}s; gave up."
                    ) from None
                if not raw:
                    return
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    raise NodeError(f"Not a status line: {raw[:200]!r}") from None
                if "error" in line:
                    error = _message(raw)
                    code = EXIT_MODEL if NOT_IN_REGISTRY in error else EXIT_ERROR
                    raise NodeError(f"Pulling {model!r} failed: {error}", code)
                yield line
        finally:
            # Explicitly: an unfinished pull must not linger in a pool.
            resp.close()
