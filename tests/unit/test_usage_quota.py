"""Quota decisions, tiers, day boundaries and OpenAI's header formats (pure code)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fognode.usage.options import Limits, QuotaOptions, StoreOptions
from fognode.usage.quota import (
    WARNING_HEADER,
    Usage,
    budgets,
    day_bounds,
    decide,
    format_reset,
    limits_for,
    tier_of,
)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


NOW = ts("2026-03-14T18:00:00")
DAY_END = ts("2026-03-15T00:00:00")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.012, "12ms"),
        (0.9996, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (20.25, "20.25s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3723.5, "1h2m3.5s"),
        (6 * 3600, "6h0m0s"),
        (-3, "0s"),
    ],
)
def test_reset_durations_print_like_go(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_day_bounds_at_midnight_utc_and_at_a_configured_hour() -> None:
    assert day_bounds(NOW, timedelta(0)) == (ts("2026-03-14T00:00:00"), DAY_END)
    three = timedelta(hours=3)
    assert day_bounds(NOW, three) == (ts("2026-03-14T03:00:00"), ts("2026-03-15T03:00:00"))
    # 02:00 is still the previous quota day when it starts at 03:00.
    early = ts("2026-03-14T02:00:00")
    assert day_bounds(early, three) == (ts("2026-03-13T03:00:00"), ts("2026-03-14T03:00:00"))
    assert day_bounds(ts("2026-03-14T03:00:00"), three)[0] == ts("2026-03-14T03:00:00")


def test_within_both_limits_the_headers_say_what_is_left() -> None:
    limits = Limits(tokens_per_day=10_000, requests_per_minute=60)
    usage = Usage(tokens_today=4000, requests_last_minute=9, oldest_request=NOW - 30)
    decision = decide(limits, usage, estimate=600, now=NOW, day_end=DAY_END)
    assert decision.allowed and decision.status == 200
    assert dict(decision.headers) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "50",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "5400",
        "x-ratelimit-reset-tokens": "6h0m0s",
    }


def test_over_the_daily_budget_insufficient_quota_until_the_reset() -> None:
    limits = Limits(tokens_per_day=1000, requests_per_minute=60)
    usage = Usage(tokens_today=1003, requests_last_minute=1, newest_request=NOW - 15)
    decision = decide(limits, usage, estimate=10, now=NOW, day_end=DAY_END)
    assert not decision.allowed
    assert (decision.status, decision.code, decision.type) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert decision.retry_after == 6 * 3600
    assert decision.headers["Retry-After"] == "21600"
    assert decision.headers["x-should-retry"] == "false"  # the OpenAI SDKs obey this
    assert decision.headers["x-ratelimit-remaining-tokens"] == "0"
    assert decision.headers["x-ratelimit-reset-tokens"] == "6h0m0s"
    assert decision.headers["x-ratelimit-remaining-requests"] == "59"
    assert decision.headers["x-ratelimit-reset-requests"] == "45s"
    assert decision.message is not None and "6h0m0s" in decision.message


def test_over_the_request_rate_retry_when_the_oldest_leaves_the_window() -> None:
    limits = Limits(requests_per_minute=3)
    usage = Usage(requests_last_minute=3, oldest_request=NOW - 42.2, newest_request=NOW - 1)
    decision = decide(limits, usage, estimate=10, now=NOW, day_end=DAY_END)
    assert (decision.allowed, decision.code, decision.type) == (
        False,
        "rate_limit_exceeded",
        "requests",
    )
    assert decision.headers["Retry-After"] == "18"  # 17.8 s, rounded up
    assert decision.headers["x-ratelimit-remaining-requests"] == "0"
    assert decision.headers["x-ratelimit-reset-requests"] == "59s"
    assert "x-should-retry" not in decision.headers
    assert "x-ratelimit-limit-tokens" not in decision.headers  # no token limit set


def test_the_last_of_a_budget_admits_one_more_request_whatever_its_estimate() -> None:
    limits = Limits(tokens_per_day=1000)
    usage = Usage(tokens_today=990)
    decision = decide(limits, usage, estimate=600, now=NOW, day_end=DAY_END)
    assert decision.allowed
    assert decision.headers["x-ratelimit-remaining-tokens"] == "0"


def test_no_limits_no_headers() -> None:
    decision = decide(Limits(), Usage(tokens_today=10**9), estimate=1, now=NOW, day_end=DAY_END)
    assert decision.allowed and dict(decision.headers) == {}


def test_tiers_by_claim_and_by_api_key() -> None:
    staff = Limits(tokens_per_day=1_000_000, requests_per_minute=600)
    options = QuotaOptions(
        default=Limits(tokens_per_day=50_000, requests_per_minute=20),
        tiers={"staff": staff, "guest": Limits(tokens_per_day=1000)},
        api_key_tiers={"ci-bot": "staff"},
    )
    assert tier_of(options, claims={"fog_tier": "staff"}, api_key_name=None) == "staff"
    assert tier_of(options, claims={"fog_tier": 3}, api_key_name=None) is None
    assert tier_of(options, claims={}, api_key_name="ci-bot") == "staff"
    assert tier_of(options, claims={}, api_key_name="other") is None
    assert limits_for(options, "staff") is staff
    assert limits_for(options, "unknown-tier") == options.default
    assert limits_for(options, None) == options.default
    custom = QuotaOptions(tier_claim="plan", tiers={"pro": staff})
    assert tier_of(custom, claims={"plan": "pro", "fog_tier": "x"}, api_key_name=None) == "pro"


def test_options_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="0 \\(no limit\\) or positive"):
        Limits(tokens_per_day=-1)
    with pytest.raises(ValueError, match="not defined"):
        QuotaOptions(api_key_tiers={"bot": "gold"})
    with pytest.raises(ValueError, match="day_start"):
        QuotaOptions(day_start=timedelta(hours=24))
    with pytest.raises(ValueError, match="exactly one"):
        StoreOptions()
    with pytest.raises(ValueError, match="postgresql://"):
        StoreOptions(database_url="mysql://x")
    assert not QuotaOptions().enabled
    assert QuotaOptions(tiers={"a": Limits(requests_per_minute=1)}).enabled


def test_an_admitted_request_past_the_warning_share_is_warned() -> None:
    limits = Limits(tokens_per_day=1000, requests_per_minute=10)
    usage = Usage(tokens_today=700, requests_last_minute=8, newest_request=NOW - 1)
    decision = decide(limits, usage, estimate=150, now=NOW, day_end=DAY_END, warn_at=0.8)
    assert decision.allowed and decision.warnings == ("tokens", "requests")
    assert decision.headers[WARNING_HEADER] == "tokens 85%, requests 90%"
    calm = decide(limits, usage, estimate=50, now=NOW, day_end=DAY_END, warn_at=0.8)
    assert calm.warnings == ("requests",) and calm.headers[WARNING_HEADER] == "requests 90%"
    never = decide(limits, usage, estimate=150, now=NOW, day_end=DAY_END, warn_at=0.0)
    assert never.warnings == () and WARNING_HEADER not in never.headers
    unlimited = decide(Limits(), usage, estimate=10**6, now=NOW, day_end=DAY_END, warn_at=0.1)
    assert unlimited.warnings == ()


def test_budgets_say_what_is_used_and_left_and_when_each_is_whole_again() -> None:
    usage = Usage(1200, 3, NOW - 50, NOW - 10)
    found = budgets(Limits(tokens_per_day=1000), usage, now=NOW, day_end=DAY_END)
    tokens, requests = found["tokens"], found["requests"]
    assert (tokens.limit, tokens.used, tokens.remaining, tokens.resets) == (1000, 1200, 0, DAY_END)
    assert tokens.near(0.8) and not tokens.near(0.0)
    # No request limit: nothing left to count down, the window still empties.
    assert (requests.limit, requests.used, requests.remaining) == (None, 3, None)
    assert requests.resets == NOW + 50 and not requests.near(0.8)
    idle = budgets(Limits(requests_per_minute=5), Usage(), now=NOW, day_end=DAY_END)
    assert idle["requests"].resets == NOW and idle["requests"].remaining == 5
