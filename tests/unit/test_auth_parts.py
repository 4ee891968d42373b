"""The auth parts on their own: bearer parsing, policy rules, cache, API keys."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from fognode.auth.api_keys import ApiKeyEntry, ApiKeys, entry_for, new_key
from fognode.auth.bearer import bearer_token
from fognode.auth.cache import VerifiedCache, token_key
from fognode.auth.errors import AuthError, PolicyError
from fognode.auth.key_file import read_entries
from fognode.auth.policy import AccessPolicy
from fognode.auth.principal import Access, Principal


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        (" Bearer x.y.z", "x.y.z"),
    ],
)
def test_bearer_token_accepted_forms(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_token"),
        ("   ", "missing_token"),
        ("Basic abc", "malformed_token"),
        ("Bearer", "malformed_token"),
        ("Bearer a b", "malformed_token"),
        ("Bearer " + "a" * 20000, "malformed_token"),
        ("Bearer tok\x01en", "malformed_token"),
    ],
)
def test_bearer_token_refusals(header: str | None, reason: str) -> None:
    with pytest.raises(AuthError) as caught:
        bearer_token(header)
    assert caught.value.reason == reason
    assert caught.value.status == 401


def user(**claims: object) -> Principal:
    email = claims.get("email")
    return Principal(
        uid=str(claims.get("uid", "u1")),
        kind="firebase",
        claims=dict(claims),
        is_admin=claims.get("admin") is True,
        email=email if isinstance(email, str) else None,
    )


def refused(policy: AccessPolicy, principal: Principal, access: Access = Access.USER) -> str:
    with pytest.raises(PolicyError) as caught:
        policy.check(principal, access)
    assert caught.value.status == 403
    return caught.value.reason


def test_policy_rules_name_the_failing_rule() -> None:
    policy = AccessPolicy.build(
        required_claims={"fog": True, "role": ["clinician", "nurse"]},
        allowed_email_domains=["@Clinic.example"],
        require_email_verified=True,
    )
    ok = user(fog=True, role="nurse", email="a@clinic.example", email_verified=True)
    policy.check(ok, Access.USER)
    assert (
        refused(policy, user(fog=True, role="nurse", email="a@other.example", email_verified=True))
        == "email_domain_not_allowed"
    )
    assert refused(policy, user(fog=True, role="nurse", email="a@clinic.example")) == (
        "email_not_verified"
    )
    assert (
        refused(
            policy, user(fog=False, role="nurse", email="a@clinic.example", email_verified=True)
        )
        == "missing_claim"
    )
    assert (
        refused(
            policy, user(fog=True, role="janitor", email="a@clinic.example", email_verified=True)
        )
        == "missing_claim"
    )
    assert refused(policy, ok, Access.ADMIN) == "admin_required"


def test_policy_uids_and_api_keys() -> None:
    policy = AccessPolicy.build(allowed_uids=["u1"], required_claims={"fog": True})
    assert refused(policy, user(uid="u2", fog=True)) == "uid_not_allowed"
    # API keys are the operator's own grant: user rules do not apply to them.
    key_user = Principal(uid="apikey:script", kind="api_key")
    policy.check(key_user, Access.USER)
    assert refused(policy, key_user, Access.ADMIN) == "admin_required"
    policy.check(Principal(uid="apikey:op", kind="api_key", is_admin=True), Access.ADMIN)


def test_admin_claim_must_be_exactly_true() -> None:
    policy = AccessPolicy.build(admin_claim="fog_admin")
    assert policy.is_admin({"fog_admin": True})
    assert not policy.is_admin({"fog_admin": "true"})
    assert not policy.is_admin({"admin": True})


async def test_cache_shares_one_verification_and_expires() -> None:
    now = [1000.0]
    cache: VerifiedCache[str] = VerifiedCache(10, clock=lambda: now[0])
    calls = 0
    gate = asyncio.Event()

    async def verify() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "alice", now[0] + 60

    key = token_key("token-a")
    waiters = [asyncio.create_task(cache.get_or_verify(key, verify)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*waiters) == ["alice"] * 50
    assert calls == 1
    assert await cache.get_or_verify(key, verify) == "alice" and calls == 1
    now[0] += 61  # past the token's exp
    assert await cache.get_or_verify(key, verify) == "alice" and calls == 2


async def test_cache_is_bounded_and_does_not_keep_failures() -> None:
    cache: VerifiedCache[int] = VerifiedCache(3)
    for i in range(5):
        cache.put(token_key(str(i)), i, until=2e9)
    assert len(cache) == 3
    assert cache.get(token_key("0")) is None and cache.get(token_key("4")) == 4

    async def failing() -> tuple[int, float]:
        raise AuthError("expired_token", "expired")

    with pytest.raises(AuthError):
        await cache.get_or_verify(token_key("bad"), failing)
    assert cache.get(token_key("bad")) is None


def test_cache_keys_are_hashes_not_tokens() -> None:
    assert token_key("secret-token") == hashlib.sha256(b"secret-token").digest()


def test_api_keys_round_trip_and_refusals() -> None:
    key = new_key()
    assert key.startswith("fnk_") and len(key) > 40
    keys = ApiKeys([ApiKeyEntry.parse(entry_for(key, "ci", admin=False))])
    principal = keys.check(key)
    assert principal is not None and principal.uid == "apikey:ci" and not principal.is_admin
    assert keys.check(key[:-1]) is None
    assert keys.check(new_key()) is None
    for bad in ("ci:user", "ci:root:" + "0" * 64, "ci:user:xyz", "ci:user:" + "0" * 10):
        with pytest.raises(ValueError):
            ApiKeyEntry.parse(bad)


def test_api_keys_file_with_comments(tmp_path: Path) -> None:
    key = new_key()
    path = tmp_path / "keys.txt"
    path.write_text(f"# operators\n\n{entry_for(key, 'op', admin=True)}\n")
    entries = read_entries([], path)
    assert len(entries) == 1 and entries[0].admin
