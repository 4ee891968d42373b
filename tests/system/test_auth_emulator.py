"""Firebase authentication and the access policy against the real Auth Emulator.

Users are created and signed in through the emulator's REST API (as an app
does), custom claims are set with firebase-admin (as an operator does), and
the gateway is driven with the real ID tokens that come back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from firebase_admin import auth

from fognode.auth.authorizer import TokenAuthorizer
from fognode.gateway.auth_setup import UnsafeConfiguration
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pipeline.access import AUTHORIZER
from tests.support.firebase_emulator import PROJECT, AuthEmulator
from tests.support.gateway import GatewayFactory
from tests.support.helpers import CHAT
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import make_pki


async def call(
    gateway: RunningServer,
    token: str | None,
    *,
    path: str = "/v1/chat/completions",
    body: dict[str, Any] | None = None,
    scheme: str = "Bearer",
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + path, json=body or CHAT, headers=headers) as resp,
    ):
        text = await resp.read()
        data = json.loads(text) if text.strip().startswith(b"{") else {}
        return resp.status, data, dict(resp.headers)


async def test_valid_emulator_token_is_admitted_and_uid_is_not_forwarded(
    make_emulator_gateway: GatewayFactory,
    emulator: AuthEmulator,
    standin: OllamaStandIn,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    gateway = await make_emulator_gateway()
    user = emulator.sign_up("alice@example.com")
    status, body, _ = await call(gateway, user.id_token)
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == standin.reply
    forwarded = standin.last("/v1/chat/completions").headers
    assert "Authorization" not in forwarded
    assert not any(user.uid in value for value in forwarded.values())
    access = [r for r in caplog.records if r.name == "fognode.access"]
    assert access[-1].fields["uid"] == user.uid  # type: ignore[attr-defined]
    assert user.id_token not in caplog.text  # tokens are never logged


async def test_scheme_is_case_insensitive_and_token_trimmed(
    make_emulator_gateway: GatewayFactory, emulator: AuthEmulator
) -> None:
    gateway = await make_emulator_gateway()
    token = emulator.sign_up("bob@example.com").id_token
    for header_scheme in ("bearer", "BEARER", "Bearer"):
        status, _, _ = await call(gateway, f"  {token}  ", scheme=header_scheme)
        assert status == 200


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_token"),
        ("", "missing_token"),
        ("Basic YWxpY2U6c2VjcmV0", "malformed_token"),
        ("Bearer", "malformed_token"),
        ("Bearer    ", "malformed_token"),
        ("Bearer not-a-jwt", "malformed_token"),
        ("Bearer abc.def.ghi", "malformed_token"),
        ("Token abc", "malformed_token"),
    ],
)
async def test_missing_and_malformed_credentials_are_401(
    make_emulator_gateway: GatewayFactory, standin: OllamaStandIn, header: str | None, reason: str
) -> None:
    gateway = await make_emulator_gateway()
    headers = {} if header is None else {"Authorization": header}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers=headers) as resp,
    ):
        assert resp.status == 401
        assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        body = await resp.json()
    assert body["error"]["code"] == reason
    assert body["error"]["type"] == "authentication_error"
    assert standin.forwarded == []


def unsigned_token(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def test_expired_and_foreign_project_emulator_tokens_are_401(
    make_emulator_gateway: GatewayFactory, emulator: AuthEmulator
) -> None:
    """The emulator's tokens are unsigned; fognode still checks time and project."""
    gateway = await make_emulator_gateway()
    now = int(time.time())
    base = {
        "iss": f"https://securetoken.google.com/{PROJECT}",
        "aud": PROJECT,
        "sub": "u1",
        "auth_time": now - 7200,
    }
    expired = unsigned_token(dict(base, iat=now - 7200, exp=now - 3600))
    status, body, _ = await call(gateway, expired)
    assert (status, body["error"]["code"]) == (401, "expired_token")
    foreign = unsigned_token(dict(base, aud="demo-other", iat=now, exp=now + 3600))
    status, body, _ = await call(gateway, foreign)
    assert (status, body["error"]["code"]) == (401, "wrong_audience")


async def test_required_claim_is_403_until_granted_with_firebase_admin(
    make_emulator_gateway: GatewayFactory, emulator: AuthEmulator, admin_sdk: Any
) -> None:
    gateway = await make_emulator_gateway(required_claims={"fog": True})
    user = emulator.sign_up("carol@example.com")
    status, body, headers = await call(gateway, user.id_token)
    assert status == 403
    assert body["error"]["code"] == "missing_claim" and "fog" in body["error"]["message"]
    assert body["error"]["type"] == "permission_error"
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]

    auth.set_custom_user_claims(user.uid, {"fog": True}, app=admin_sdk)
    fresh = emulator.sign_in("carol@example.com")
    status, _, _ = await call(gateway, fresh.id_token)
    assert status == 200


async def test_allowed_uids_email_domains_and_verified_email(
    make_emulator_gateway: GatewayFactory, emulator: AuthEmulator
) -> None:
    staff = emulator.sign_up("dana@clinic.example")
    outsider = emulator.sign_up("eve@gmail.example")

    by_domain = await make_emulator_gateway(allowed_email_domains=["clinic.example"])
    assert (await call(by_domain, staff.id_token))[0] == 200
    status, body, _ = await call(by_domain, outsider.id_token)
    assert (status, body["error"]["code"]) == (403, "email_domain_not_allowed")

    by_uid = await make_emulator_gateway(allowed_uids=[outsider.uid])
    assert (await call(by_uid, outsider.id_token))[0] == 200
    status, body, _ = await call(by_uid, staff.id_token)
    assert (status, body["error"]["code"]) == (403, "uid_not_allowed")

    verified_only = await make_emulator_gateway(require_email_verified=True)
    status, body, _ = await call(verified_only, staff.id_token)
    assert (status, body["error"]["code"]) == (403, "email_not_verified")
    emulator.verify_email(staff.uid)
    assert (await call(verified_only, emulator.sign_in(staff.email).id_token))[0] == 200


async def test_model_management_needs_the_admin_claim(
    make_emulator_gateway: GatewayFactory,
    emulator: AuthEmulator,
    admin_sdk: Any,
    standin: OllamaStandIn,
) -> None:
    gateway = await make_emulator_gateway(admin_claim="fog_admin")
    user = emulator.sign_up("frank@example.com")
    pull = {"model": "llama3.2:1b", "stream": False}
    status, body, _ = await call(gateway, user.id_token, path="/api/pull", body=pull)
    assert (status, body["error"]["code"]) == (403, "admin_required")
    assert "fog_admin" in body["error"]["message"]
    assert [r.path for r in standin.forwarded] == []

    auth.set_custom_user_claims(user.uid, {"fog_admin": True}, app=admin_sdk)
    admin = emulator.sign_in(user.email)
    status, body, _ = await call(gateway, admin.id_token, path="/api/pull", body=pull)
    assert status == 200 and body == {"status": "success"}


async def test_revoked_and_disabled_users_with_revocation_checks(
    make_emulator_gateway: GatewayFactory, emulator: AuthEmulator, admin_sdk: Any
) -> None:
    gateway = await make_emulator_gateway(check_revoked=True, revocation_recheck_seconds=0.2)
    user = emulator.sign_up("gina@example.com")
    assert (await call(gateway, user.id_token))[0] == 200
    await asyncio.sleep(1.1)  # revocation has one-second resolution
    auth.revoke_refresh_tokens(user.uid, app=admin_sdk)
    await asyncio.sleep(0.3)  # past the re-check interval of the cached result
    status, body, _ = await call(gateway, user.id_token)
    assert (status, body["error"]["code"]) == (401, "revoked_token")

    other = emulator.sign_up("hal@example.com")
    assert (await call(gateway, other.id_token))[0] == 200
    auth.update_user(other.uid, disabled=True, app=admin_sdk)
    await asyncio.sleep(0.3)
    status, body, _ = await call(gateway, other.id_token)
    assert (status, body["error"]["code"]) == (401, "user_disabled")


async def test_one_verification_per_token_while_it_is_valid(
    make_emulator_gateway: GatewayFactory, emulator: AuthEmulator
) -> None:
    gateway = await make_emulator_gateway()
    token = emulator.sign_up("ivy@example.com").id_token
    results = await asyncio.gather(*(call(gateway, token) for _ in range(30)))
    assert {status for status, _, _ in results} == {200}
    authorizer = gateway.app[AUTHORIZER]
    assert isinstance(authorizer, TokenAuthorizer)
    assert authorizer.cache.misses == 1
    assert authorizer.cache.hits == 29


async def test_emulator_with_tls_is_refused_unless_allowed(
    standin: OllamaStandIn, make_gateway: GatewayFactory, emulator: AuthEmulator, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "certs")
    with pytest.raises(UnsafeConfiguration, match="unsigned tokens"):
        await make_gateway(
            standin.url,
            auth="firebase",
            tls=True,
            certs_dir=pki.paths.directory,
            firebase_project_id=PROJECT,
            firebase_auth_emulator_host=emulator.host,
        )


async def test_api_keys_made_by_the_cli(
    standin: OllamaStandIn, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """`fognode apikey create` adds the key to the node's key file (its own
    data directory here), which the node reads: no entry to copy anywhere."""
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))

    def create(name: str, *flags: str) -> dict[str, str]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "fognode.gateway.cli",
                "apikey",
                "create",
                name,
                "--json",
                *flags,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env=env,
        )
        return dict(json.loads(out.stdout))

    script, operator = create("backup-script"), create("operator", "--admin")
    assert script["file"] == operator["file"] == str(tmp_path / "data" / "fognode" / "api-keys")
    key_file = await asyncio.to_thread(Path(script["file"]).read_text)
    assert script["key"] not in key_file and operator["key"] not in key_file  # hashes only
    gateway = await make_gateway(standin.url, auth="firebase", api_keys_file=script["file"])
    assert (await call(gateway, script["key"]))[0] == 200
    status, body, _ = await call(gateway, script["key"] + "x")
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    pull = {"model": "llama3.2:1b", "stream": False}
    status, body, _ = await call(gateway, script["key"], path="/api/pull", body=pull)
    assert (status, body["error"]["code"]) == (403, "admin_required")
    assert (await call(gateway, operator["key"], path="/api/pull", body=pull))[0] == 200
    # Without a Firebase project, JWTs are refused, not crashed on.
    status, body, _ = await call(gateway, "eyJhbGciOiJub25lIn0.e30.")
    assert status == 401


def test_claims_cli_against_the_emulator(emulator: AuthEmulator) -> None:
    user = emulator.sign_up("jo@example.com")
    env = dict(
        os.environ,
        FOGNODE_FIREBASE_AUTH_EMULATOR_HOST=emulator.host,
        FOGNODE_FIREBASE_PROJECT_ID=PROJECT,
    )
    cli = [sys.executable, "-m", "fognode.gateway.cli", "claims"]
    out = subprocess.run(
        [
            *cli,
            "set",
            "jo@example.com",
            "--admin",
            "--claim",
            "fog=true",
            "--claim",
            'role="clinician"',
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    shown = subprocess.run(
        [*cli, "show", user.uid], capture_output=True, text=True, env=env, timeout=60
    )
    assert json.loads(shown.stdout)["claims"] == {"admin": True, "fog": True, "role": "clinician"}
    # The claims arrive in the next ID token.
    token = emulator.sign_in("jo@example.com").id_token
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["admin"] is True and claims["role"] == "clinician"
    removed = subprocess.run(
        [*cli, "set", user.uid, "--no-admin", "--remove", "role"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert json.loads(removed.stdout)["claims"] == {"fog": True}
