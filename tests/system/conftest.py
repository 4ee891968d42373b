"""The system level: real processes (`fognode serve`, llama.cpp, the CLI, curl,
openssl), network namespaces, headless Chromium, the Firebase Auth Emulator,
PostgreSQL, real models.

Slow by nature; `./test.sh system` runs this level alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fognode.gateway.node.server import RunningServer
from tests.support.browser import browser, page
from tests.support.firebase_emulator import (
    PROJECT,
    AuthEmulator,
    admin_sdk,
    auth_emulator_session,
    emulator,
)
from tests.support.fog import fog_pki
from tests.support.gateway import GatewayFactory, gateway, http, make_gateway, standin, unconfigured
from tests.support.netns import lan
from tests.support.ollama_standin import OllamaStandIn
from tests.support.onboarding import ca_forms, clinic_pki, onboarding
from tests.support.pki import pki
from tests.support.postgres import postgres_server, postgres_url
from tests.support.processes import Process
from tests.support.status_page import https, status_gateway
from tests.support.tls import expired_gateway, rogue_pki, tls_gateway
from tests.support.tokens import key_set, signing_key, stranger_key

__all__ = [
    "admin_sdk",
    "auth_emulator_session",
    "browser",
    "ca_forms",
    "clinic_pki",
    "emulator",
    "expired_gateway",
    "fog_pki",
    "gateway",
    "http",
    "https",
    "key_set",
    "lan",
    "make_gateway",
    "onboarding",
    "page",
    "pki",
    "postgres_server",
    "postgres_url",
    "rogue_pki",
    "signing_key",
    "standin",
    "status_gateway",
    "stranger_key",
    "tls_gateway",
    "unconfigured",
]


@pytest.fixture
def procs() -> Iterator[list[Process]]:
    """Processes a test starts (in network namespaces), stopped at its end."""
    started: list[Process] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
async def make_emulator_gateway(
    standin: OllamaStandIn, make_gateway: GatewayFactory, emulator: AuthEmulator
) -> GatewayFactory:
    """Gateways in front of the stand-in that take the emulator's ID tokens."""

    async def factory(**overrides: Any) -> RunningServer:
        return await make_gateway(
            standin.url,
            auth="firebase",
            firebase_project_id=PROJECT,
            firebase_auth_emulator_host=emulator.host,
            **overrides,
        )

    return factory


@pytest.fixture
async def emulator_gateway(make_emulator_gateway: GatewayFactory) -> RunningServer:
    return await make_emulator_gateway()
