"""Shared fixtures: an Ollama stand-in and a gateway in front of it.

Both run in the test's own event loop on 127.0.0.1 with ephemeral ports, so
tests can look inside either one (counters, recorded requests) while driving
them over real sockets.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from fognode.gateway.config.settings import Settings
from fognode.gateway.node.server import RunningServer, start_server
from tests.firebase_emulator import AuthEmulator, firebase_binary
from tests.netns import Proc
from tests.ollama_standin import OllamaStandIn
from tests.postgres import PostgresServer, postgres_bin_dir

GatewayFactory = Callable[..., Awaitable[RunningServer]]

# Browser fixtures (Debian chromium through Playwright) and the QR decoder.
pytest_plugins = ["tests.browser"]

# No test reads or writes the data directory of whoever runs the suite
# (~/.local/share/fognode: their node's keys, certificates, usage records,
# session key): everything that falls back to the defaults lands here instead,
# in this process and in the processes tests start with its environment.
DATA_HOME = tempfile.mkdtemp(prefix="fognode-tests-data-")
os.environ["XDG_DATA_HOME"] = DATA_HOME
# No node a test starts joins a fog unless the test says so: every test PKI
# holds node credentials (tests/pki.py, as setup.sh leaves a node), and nodes
# on one machine would take the same peer port. The fog's tests turn it on.
os.environ["FOGNODE_FOG"] = "off"


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(DATA_HOME, ignore_errors=True)


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
def procs() -> Iterator[list[Proc]]:
    """Processes a test starts (in network namespaces), stopped at its end."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(autouse=True)
def _isolate_firebase_emulator_env() -> Iterator[None]:
    """firebase-admin's emulator switch is process-wide; no test may leak it.

    Autouse fixtures are set up first and torn down last, so this restores the
    variable after every gateway and operator SDK app of the test is closed.
    """
    name = "FIREBASE_AUTH_EMULATOR_HOST"
    before = os.environ.get(name)
    yield
    if before is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = before


@pytest.fixture(scope="session")
def auth_emulator_session() -> Iterator[AuthEmulator]:
    binary = firebase_binary()
    if binary is None:
        pytest.fail("firebase-tools is not installed: run ./setup.sh (it caches the emulator)")
    emulator = AuthEmulator(binary)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def emulator(auth_emulator_session: AuthEmulator) -> AuthEmulator:
    auth_emulator_session.clear()
    return auth_emulator_session


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the session (setup.sh installs it)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.fail("PostgreSQL is not installed: run ./setup.sh (it installs Debian's postgresql)")
    server = PostgresServer(bin_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty database on the session's server, for one test."""
    return await postgres_server.new_database()
