"""Token time checks firebase-admin leaves out (issue 11, defect 3).

Production tokens are minted with a local RS256 key (tests/support/tokens.py);
the emulator-mode half of these checks is in tests/system/test_auth_hardening.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from fognode.auth.errors import AuthError
from fognode.auth.firebase import CLOCK_SKEW_SECONDS, FirebaseVerifier, check_times
from tests.support.tokens import SigningKey


async def verify(verifier: FirebaseVerifier, token: str) -> dict[str, Any]:
    return await asyncio.to_thread(verifier.verify, token)


LATER = 3600  # well beyond the clock skew allowance


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"nbf": "later"}, "not_yet_valid"),
        ({"auth_time": "later"}, "not_yet_valid"),
        ({"auth_time": None}, "invalid_token"),
        ({"auth_time": "a string"}, "invalid_token"),
        ({"nbf": True}, "invalid_token"),
    ],
)
async def test_production_tokens_with_future_nbf_or_auth_time_are_refused(
    verifier: FirebaseVerifier, signing_key: SigningKey, claims: dict[str, Any], reason: str
) -> None:
    later = int(time.time()) + LATER
    token = signing_key.mint(**{k: later if v == "later" else v for k, v in claims.items()})
    with pytest.raises(AuthError) as caught:
        await verify(verifier, token)
    assert caught.value.reason == reason


async def test_production_time_claims_within_the_skew_are_accepted(
    verifier: FirebaseVerifier, signing_key: SigningKey
) -> None:
    """A node whose clock lags Google's a little still accepts fresh tokens."""
    soon = int(time.time()) + CLOCK_SKEW_SECONDS // 2
    claims = await verify(verifier, signing_key.mint(iat=soon, auth_time=soon, nbf=soon))
    assert claims["uid"] == "user-123"
    # ... but exp gets no allowance.
    with pytest.raises(AuthError) as caught:
        await verify(verifier, signing_key.mint(exp=int(time.time()) - 2))
    assert caught.value.reason == "expired_token"


def test_check_times_rules() -> None:
    now = 1_000_000.0
    base = {"iat": now, "auth_time": now, "exp": now + 60}
    check_times(base, now)
    check_times(dict(base, nbf=now + CLOCK_SKEW_SECONDS), now)
    for name in ("iat", "auth_time", "nbf"):
        with pytest.raises(AuthError, match=name):
            check_times(dict(base, **{name: now + CLOCK_SKEW_SECONDS + 1}), now)
    with pytest.raises(AuthError, match="expired"):
        check_times(dict(base, exp=now), now)
