"""Fuzzing: schemathesis against fognode's own OpenAPI document, hypothesis on the models.

Whatever a client sends, the gateway answers without a 5xx of its own
making, and every error it makes is OpenAI-shaped.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from fognode.auth.api_keys import entry_for, new_key
from fognode.auth.principal import Access
from fognode.gateway.config.settings import Settings
from fognode.gateway.node.server import RunningServer, start_server
from fognode.gateway.pages.openapi import build_document
from fognode.gateway.pipeline.routes import PROXIED_ROUTES, RouteSpec
from tests.support.ollama_standin import OllamaStandIn

ADMIN_KEY = new_key()


class LiveNode:
    """Stand-in and gateway on their own event loop in a thread (schemathesis is sync)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.standin = OllamaStandIn()
        self.gateway: RunningServer | None = None

    def start(self) -> str:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)

    async def _start(self) -> str:
        await self.standin.start()
        settings = Settings(
            host="127.0.0.1",
            port=0,
            upstream_url=self.standin.url,
            tls=False,
            mdns=False,
            auth="firebase",
            api_keys=[entry_for(ADMIN_KEY, "fuzzer", admin=True)],
            max_concurrent_requests=64,
            per_user_concurrent_requests=64,
            shutdown_timeout=1,
            first_byte_timeout=10,
        )
        self.gateway = await start_server(settings)
        return self.gateway.url

    def stop(self) -> None:
        async def _stop() -> None:
            if self.gateway is not None:
                await self.gateway.stop()
            await self.standin.stop()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def live_url() -> Iterator[str]:
    node = LiveNode()
    url = node.start()
    yield url
    node.stop()


# The document the gateway serves: the forwarded routes and those of its own.
OWN_ROUTES = (
    RouteSpec("GET", "/healthz", Access.PUBLIC),
    RouteSpec("GET", "/readyz", Access.PUBLIC),
    RouteSpec("GET", "/metrics", Access.ADMIN),
    RouteSpec("GET", "/openapi.json", Access.PUBLIC),
)
SCHEMA = schemathesis.openapi.from_dict(build_document(PROXIED_ROUTES + OWN_ROUTES))


def openai_shaped_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error the gateway answers is {"error": {message, type, param, code}}."""
    if response.status_code < 400 or case.method == "HEAD":  # HEAD answers carry no body
        return None
    body = response.json()
    error = body.get("error")
    if isinstance(error, str):
        return None  # Ollama's own native-API error, passed through untouched
    assert isinstance(error, dict), body
    assert set(error) >= {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"], body
    return None


@SCHEMA.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_never_fails_and_errors_are_openai_shaped(case: Any, live_url: str) -> None:
    session = requests.Session()
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {ADMIN_KEY}"}
    response = case.call(base_url=live_url, session=session, timeout=30)
    case.validate_response(response, checks=(not_a_server_error, openai_shaped_errors))


def test_openapi_document_is_served_without_credentials(live_url: str) -> None:
    doc = requests.get(f"{live_url}/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/chat/completions" in doc["paths"] and "/api/pull" in doc["paths"]
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])
    assert doc["paths"]["/api/pull"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]
