"""A node whose status page an operator signs in to: the gateway in the test's
process with TLS, an operator's key and a phone's key; a client that trusts
its CA and keeps cookies. For the status page tests of the gateway and the
system level (the browser)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest

from fognode.auth.api_keys import entry_for, new_key
from fognode.auth.throttle import FailureThrottle
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pages.sessions import SESSIONS, LocalSignInThrottle
from tests.support.gateway import GatewayFactory
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import Pki

ADMIN_KEY, USER_KEY, SCOPED_ADMIN_KEY = new_key(), new_key(), new_key()
LIFETIME = 900.0


@pytest.fixture
async def status_gateway(
    standin: OllamaStandIn, make_gateway: GatewayFactory, pki: Pki
) -> RunningServer:
    standin.pull_pace = 0.05  # Ollama reports a pull every 60 ms
    return await make_gateway(
        standin.url,
        tls=True,
        certs_dir=pki.paths.directory,
        auth="firebase",
        api_keys=[
            entry_for(ADMIN_KEY, "operator", admin=True),
            entry_for(USER_KEY, "phone", admin=False),
            entry_for(SCOPED_ADMIN_KEY, "study-admin", admin=True, models=("llama3.2:1b",)),
        ],
        status_refresh_seconds=0.3,
        session_lifetime=LIFETIME,
    )


@pytest.fixture
async def https(pki: Pki) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that trusts the node's CA and keeps cookies (also for 127.0.0.1)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    ) as session:
        yield session


def failures(node: RunningServer) -> FailureThrottle:
    """The sign-in throttle of a node that is one process (it holds it)."""
    held = node.app[SESSIONS].throttle
    assert isinstance(held, LocalSignInThrottle)
    return held.failures
