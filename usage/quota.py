"""Quota decisions: pure functions of a user's limits, usage and the clock.

Two budgets per user, chosen by tier (:class:`~.options.QuotaOptions`):

* **tokens per day** (prompt + completion), reset at the configured day
  boundary (midnight UTC by default). Exhausted: 429 with OpenAI's
  ``insufficient_quota`` code, since retrying before the reset is futile
  (``Retry-After`` says when it resets, and ``x-should-retry: false`` stops
  the OpenAI SDKs from retrying at once);
* **requests per minute**, over a sliding window of the last 60 seconds.
  Exhausted: 429 ``rate_limit_exceeded`` (type ``requests``) with
  ``Retry-After`` until the oldest request in the window leaves it.

Past a share of a budget (``warn_at``, 80 % by default) an admitted
request's decision names the budgets (``warnings``) and says so in a header
of fognode's own, ``x-fognode-quota-warning: tokens 85%`` (an app can then
ask GET /v1/fognode/usage how much is left and when it resets).

Every decision also carries OpenAI's rate-limit headers for the limits that
are set, with OpenAI's meanings: ``x-ratelimit-limit-*`` the limit,
``x-ratelimit-remaining-*`` what is left after this request (its token
estimate deducted), ``x-ratelimit-reset-*`` the time until the budget is
back to its initial state, in Go's duration format (``1s``, ``6m0s``,
``12ms``) as OpenAI sends it.

A request is admitted while the user has budget left *after the
reservations of their requests in flight* (see :mod:`.ledger`); its own
estimate need not fit, so a user is not refused a short question by a
generous ``max_tokens``. The overshoot past the daily budget is therefore
at most what the last admitted request actually uses (plus, with several
nodes, what other nodes have in flight or not yet flushed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from .options import Limits, QuotaOptions

WINDOW_SECONDS = 60.0
WARNING_HEADER = "x-fognode-quota-warning"


@dataclass(frozen=True, slots=True)
class Usage:
    """What a user has used, as seen at admission.

    ``tokens_today``: recorded tokens since the day began plus the
    reservations of requests in flight. ``requests_last_minute``: requests
    started in the last 60 s (recorded or in flight; rejected ones do not
    count). ``oldest_request``/``newest_request``: the first and last of
    those start times (Unix seconds), or None.
    """

    tokens_today: int = 0
    requests_last_minute: int = 0
    oldest_request: float | None = None
    newest_request: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Admit or refuse; ``headers`` go on the response either way."""

    allowed: bool
    headers: Mapping[str, str] = field(default_factory=dict)
    status: int = 200
    code: str | None = None
    type: str | None = None
    message: str | None = None
    retry_after: int | None = None
    warnings: tuple[str, ...] = ()  # "tokens", "requests": budgets past the warning share


ALLOW_UNLIMITED = Decision(allowed=True)


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget as its user is told it (GET /v1/fognode/usage)."""

    limit: int | None  # None: no limit
    used: int
    resets: float  # Unix time it is whole again

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    def near(self, warn_at: float) -> bool:
        """Past the warning share (``warn_at`` 0: never)."""
        return bool(warn_at and self.limit and self.used >= warn_at * self.limit)


def budgets(limits: Limits, usage: Usage, *, now: float, day_end: float) -> dict[str, Budget]:
    """Today's tokens and this minute's requests: used, left, and when each is
    whole again (the day's end; a minute after the newest request in the
    window, as OpenAI's reset headers mean it)."""
    newest = usage.newest_request
    return {
        "tokens": Budget(limits.tokens_per_day or None, usage.tokens_today, day_end),
        "requests": Budget(
            limits.requests_per_minute or None,
            usage.requests_last_minute,
            now if newest is None else max(now, newest + WINDOW_SECONDS),
        ),
    }


def tier_of(
    options: QuotaOptions, *, claims: Mapping[str, object], api_key_name: str | None
) -> str | None:
    """The caller's tier: the API key's configured tier, or the tier claim."""
    if api_key_name is not None:
        return options.api_key_tiers.get(api_key_name)
    value = claims.get(options.tier_claim)
    return value if isinstance(value, str) else None


def limits_for(options: QuotaOptions, tier: str | None) -> Limits:
    if tier is not None and tier in options.tiers:
        return options.tiers[tier]
    return options.default


def day_bounds(now: float, day_start: timedelta) -> tuple[float, float]:
    """Start and end (Unix seconds) of the quota day that contains ``now``."""
    shifted = datetime.fromtimestamp(now, UTC) - day_start
    midnight = shifted.replace(hour=0, minute=0, second=0, microsecond=0)
    start = (midnight + day_start).timestamp()
    return start, start + 86_400.0


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI's reset headers (Go's ``time.Duration``) print it:
    ``0s``, ``12ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``; millisecond precision."""
    millis = max(0, round(seconds * 1000))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def decide(
    limits: Limits,
    usage: Usage,
    *,
    estimate: int,
    now: float,
    day_end: float,
    warn_at: float = 0.0,
) -> Decision:
    """Admit a request of ``estimate`` tokens, or say why not and for how long;
    an admitted one that brings a budget to ``warn_at`` of it is warned."""
    headers: dict[str, str] = {}
    tokens_limit = limits.tokens_per_day
    requests_limit = limits.requests_per_minute
    tokens_left = tokens_limit - usage.tokens_today
    requests_left = requests_limit - usage.requests_last_minute
    until_day_end = max(0.0, day_end - now)

    if requests_limit:
        headers["x-ratelimit-limit-requests"] = str(requests_limit)
    if tokens_limit:
        headers["x-ratelimit-limit-tokens"] = str(tokens_limit)

    if tokens_limit and tokens_left <= 0:
        retry = max(1, math.ceil(until_day_end))
        _refused_headers(headers, limits, usage, now, tokens_reset=until_day_end)
        headers["Retry-After"] = str(retry)
        headers["x-should-retry"] = "false"
        return Decision(
            allowed=False,
            headers=headers,
            status=429,
            code="insufficient_quota",
            type="insufficient_quota",
            message=(
                f"You exceeded your daily token quota on this fog node: limit {tokens_limit}, "
                f"used {usage.tokens_today}. It resets in {format_reset(until_day_end)}."
            ),
            retry_after=retry,
        )
    if requests_limit and requests_left <= 0:
        oldest = usage.oldest_request if usage.oldest_request is not None else now
        wait = max(0.0, oldest + WINDOW_SECONDS - now)
        retry = max(1, math.ceil(wait))
        _refused_headers(headers, limits, usage, now, tokens_reset=until_day_end)
        headers["Retry-After"] = str(retry)
        return Decision(
            allowed=False,
            headers=headers,
            status=429,
            code="rate_limit_exceeded",
            type="requests",
            message=(
                f"Rate limit reached for requests per minute (RPM) on this fog node: "
                f"limit {requests_limit}, used {usage.requests_last_minute}, requested 1. "
                f"Please try again in {format_reset(wait)}."
            ),
            retry_after=retry,
        )

    if requests_limit:
        headers["x-ratelimit-remaining-requests"] = str(max(0, requests_left - 1))
        # With this request in the window, the window empties a minute from now.
        headers["x-ratelimit-reset-requests"] = format_reset(WINDOW_SECONDS)
    if tokens_limit:
        headers["x-ratelimit-remaining-tokens"] = str(max(0, tokens_left - estimate))
        headers["x-ratelimit-reset-tokens"] = format_reset(until_day_end)
    shares = {
        "tokens": (usage.tokens_today + estimate, tokens_limit),
        "requests": (usage.requests_last_minute + 1, requests_limit),
    }
    warned = {
        budget: min(100, 100 * used // limit)
        for budget, (used, limit) in shares.items()
        if warn_at and limit and used >= warn_at * limit
    }
    if warned:
        headers[WARNING_HEADER] = ", ".join(f"{b} {p}%" for b, p in warned.items())
    return Decision(allowed=True, headers=headers, warnings=tuple(warned))


def _refused_headers(
    headers: dict[str, str], limits: Limits, usage: Usage, now: float, *, tokens_reset: float
) -> None:
    if limits.requests_per_minute:
        headers["x-ratelimit-remaining-requests"] = str(
            max(0, limits.requests_per_minute - usage.requests_last_minute)
        )
        newest = usage.newest_request
        reset = 0.0 if newest is None else max(0.0, newest + WINDOW_SECONDS - now)
        headers["x-ratelimit-reset-requests"] = format_reset(reset)
    if limits.tokens_per_day:
        headers["x-ratelimit-remaining-tokens"] = str(
            max(0, limits.tokens_per_day - usage.tokens_today)
        )
        headers["x-ratelimit-reset-tokens"] = format_reset(tokens_reset)
