"""Quota tiers by API key and by a Firebase claim set with firebase-admin, through
the gateway against the real Firebase Auth Emulator."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from firebase_admin import auth

from fognode.auth.api_keys import entry_for, new_key
from tests.support.firebase_emulator import PROJECT, AuthEmulator
from tests.support.gateway import GatewayFactory
from tests.support.helpers import CHAT
from tests.support.ollama_standin import OllamaStandIn
from tests.support.usage import post, rid


async def test_tiers_by_api_key_and_by_firebase_claim(
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    emulator: AuthEmulator,
    admin_sdk: Any,
) -> None:
    ci = new_key()
    gateway = await make_gateway(
        standin.url,
        auth="firebase",
        firebase_project_id=PROJECT,
        firebase_auth_emulator_host=emulator.host,
        api_keys=[entry_for(ci, "ci", admin=False)],
        api_keys_file=None,
        quota_requests_per_minute=1,
        quota_tiers={"staff": {"requests_per_minute": 5}, "robots": {}},
        quota_api_key_tiers={"ci": "robots"},
        # Records stay pending for the whole test: a batch committed while a
        # check reads the store is counted twice for that one check (refusing
        # a little early, as usage/ledger.py says), which would make the exact
        # counts below depend on when the writer ran. This test is about tiers.
        usage_flush_seconds=60,
    )
    url = f"{gateway.url}/api/chat"
    guest = emulator.sign_up("guest@clinic.example")
    staff = emulator.sign_up("nurse@clinic.example")
    await asyncio.to_thread(
        auth.set_custom_user_claims, staff.uid, {"fog_tier": "staff"}, app=admin_sdk
    )
    staff_token = (await asyncio.to_thread(emulator.sign_in, "nurse@clinic.example")).id_token

    statuses = [
        (await post(http, url, CHAT, request_id=rid(), key=guest.id_token))[0] for _ in range(2)
    ]
    assert statuses == [200, 429]  # the default: one a minute
    statuses = [
        (await post(http, url, CHAT, request_id=rid(), key=staff_token))[0] for _ in range(6)
    ]
    assert statuses == [200] * 5 + [429]  # the claim's tier
    answers = [await post(http, url, CHAT, request_id=rid(), key=ci) for _ in range(4)]
    assert [status for status, _, _ in answers] == [200] * 4  # the key's tier: no limit
    assert not any(name.startswith("x-ratelimit") for name in answers[-1][2])
