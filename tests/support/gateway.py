"""The gateway in the test's own process: an Ollama stand-in and a gateway in front of it.

Both run in the test's own event loop on 127.0.0.1 with ephemeral ports, so
tests can look inside either one (counters, recorded requests) while driving
them over real sockets. The fixtures are imported by the conftest of each
level that uses them (gateway/, system/).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fognode.gateway.config.settings import Settings
from fognode.gateway.node.server import RunningServer, start_server
from tests.support.ollama_standin import OllamaStandIn

GatewayFactory = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def standin() -> AsyncIterator[OllamaStandIn]:
    server = OllamaStandIn()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def make_gateway(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[GatewayFactory]:
    started: list[RunningServer] = []

    async def factory(upstream_url: str, **overrides: Any) -> RunningServer:
        authorizer = overrides.pop("authorizer", None)
        overrides.setdefault("shutdown_timeout", 1.0)
        overrides.setdefault("tls", False)
        # Tests of the proxy run without auth; the auth tests turn it on.
        overrides.setdefault("auth", "none")
        overrides.setdefault("mdns", False)  # the discovery tests turn it on
        # Roomy limits: tests that are not about admission send bursts.
        overrides.setdefault("max_concurrent_requests", 128)
        overrides.setdefault("per_user_concurrent_requests", 128)
        # Every test client is 127.0.0.1: no per-address cap unless a test sets one.
        overrides.setdefault("max_connections_per_client", 0)
        # Each gateway records usage in a file of its own, never the user's data dir.
        if "usage_database_url" not in overrides:
            overrides.setdefault(
                "usage_sqlite_path", tmp_path_factory.mktemp("usage") / "usage.sqlite3"
            )
        # No phone onboarding page on port 80 unless a test asks for one on its own port;
        # the status page's session key in the test's own directory.
        overrides.setdefault("onboarding", False)
        overrides.setdefault("session_key_file", tmp_path_factory.mktemp("data") / "session-key")
        settings = Settings(host="127.0.0.1", port=0, upstream_url=upstream_url, **overrides)
        running = await start_server(settings, authorizer=authorizer)
        started.append(running)
        return running

    yield factory
    for running in started:
        await running.stop()


@pytest.fixture
async def gateway(standin: OllamaStandIn, make_gateway: GatewayFactory) -> RunningServer:
    return await make_gateway(standin.url)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def unconfigured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[list[RunningServer]]:
    """start_server() with no upstream configured, as `fognode serve` on a fresh machine."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    started: list[RunningServer] = []
    yield started
    for running in started:
        await running.stop()


def fresh_settings() -> Settings:
    """The settings of `fognode serve` on a fresh machine: no upstream configured."""
    return Settings(
        host="127.0.0.1",
        port=0,
        tls=False,
        auth="none",
        mdns=False,
        shutdown_timeout=1,
        embedded_context_size=1024,
    )
