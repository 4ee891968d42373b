"""The package's configuration, as small frozen objects.

The gateway builds these from its one settings model and passes them in;
nothing here reads the environment or the settings itself. The settings
that feed them (gateway/config/sections/usage.py, docs/configuration.md):

* ``usage_accounting`` (``true``): whether the gateway records usage at all;
* ``usage_database_url`` (unset; a secret, masked by ``fognode config``):
  ``StoreOptions.database_url``, PostgreSQL shared by nodes;
* ``usage_sqlite_path`` (``<data dir>/usage.sqlite3``): ``StoreOptions.sqlite_path``;
* ``usage_flush_records`` (``100``), ``usage_flush_seconds`` (``1.0``),
  ``usage_buffer_limit`` (``10000``): the batching of :class:`StoreOptions`;
* ``quota_tokens_per_day``, ``quota_requests_per_minute`` (``0``, no limit):
  ``QuotaOptions.default``;
* ``quota_tiers`` (``{}``, JSON): ``QuotaOptions.tiers``;
* ``quota_tier_claim`` (``fog_tier``), ``quota_api_key_tiers`` (``{}``, JSON),
  ``quota_day_start`` (``00:00`` UTC), ``quota_default_completion_tokens``
  (``512``): the fields of :class:`QuotaOptions` of the same names;
* ``quota_warn_at`` (``0.8``): ``QuotaOptions.warn_at``;
* ``usage_metrics_per_user`` (``false``): per-user Prometheus labels.

``quota_tiers`` example: ``{"staff": {"tokens_per_day": 0, "requests_per_minute":
600}, "guest": {"tokens_per_day": 20000, "requests_per_minute": 10}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Limits:
    """One user's budget. 0 means no limit."""

    tokens_per_day: int = 0
    requests_per_minute: int = 0

    def __post_init__(self) -> None:
        if self.tokens_per_day < 0 or self.requests_per_minute < 0:
            raise ValueError("quota limits must be 0 (no limit) or positive")

    @property
    def unlimited(self) -> bool:
        return not self.tokens_per_day and not self.requests_per_minute


def _frozen_map(value: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True, slots=True)
class QuotaOptions:
    """Who gets which :class:`Limits`.

    ``default`` applies to everyone without a tier. A Firebase user's tier is
    the string value of the custom claim ``tier_claim`` (``fog_tier:
    "staff"``); an API key's tier is looked up by key name in
    ``api_key_tiers``. A tier not in ``tiers`` falls back to ``default``.

    ``day_start``: when the daily token budget resets, as an offset from
    midnight UTC (``timedelta(hours=3)``: at 03:00 UTC).
    ``default_completion_tokens``: what a request that sets no maximum is
    assumed to generate when its reservation is made at admission.
    ``warn_at``: the share of a budget (0.8: 80 %) from which an admitted
    request is warned, in a header, and the operator in the log and on the
    status page, before the budget bites; 0: never.
    """

    default: Limits = Limits()
    tiers: Mapping[str, Limits] = field(default_factory=dict)
    tier_claim: str = "fog_tier"
    api_key_tiers: Mapping[str, str] = field(default_factory=dict)
    day_start: timedelta = timedelta(0)
    default_completion_tokens: int = 512
    warn_at: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.warn_at <= 1.0:
            raise ValueError("warn_at is a share of the budget: between 0 and 1")
        if not timedelta(0) <= self.day_start < timedelta(days=1):
            raise ValueError("day_start must be between 00:00 and 24:00")
        unknown = set(self.api_key_tiers.values()) - set(self.tiers)
        if unknown:
            raise ValueError(f"API keys are given tiers that are not defined: {sorted(unknown)}")
        object.__setattr__(self, "tiers", _frozen_map(self.tiers))
        object.__setattr__(self, "api_key_tiers", _frozen_map(self.api_key_tiers))

    @property
    def enabled(self) -> bool:
        """Whether any user has any limit (otherwise admission skips the store)."""
        return not self.default.unlimited or any(not t.unlimited for t in self.tiers.values())


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Where records go and how they are batched.

    ``database_url`` (``postgresql://...``) selects PostgreSQL, for nodes
    that share budgets; otherwise SQLite at ``sqlite_path``. A batch is
    written when ``flush_records`` records are waiting or ``flush_seconds``
    after the first of them, whichever comes first; at most
    ``buffer_limit`` records wait in memory while the store is unreachable
    (beyond that new records are dropped and counted).
    """

    sqlite_path: Path | None = None
    database_url: str | None = field(default=None, repr=False)  # may carry a password
    flush_records: int = 100
    flush_seconds: float = 1.0
    buffer_limit: int = 10_000

    def __post_init__(self) -> None:
        if (self.sqlite_path is None) == (self.database_url is None):
            raise ValueError("give exactly one of sqlite_path and database_url")
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("database_url must be a postgresql:// URL")
        if self.flush_records < 1 or self.flush_seconds <= 0:
            raise ValueError("flush_records and flush_seconds must be positive")
        if self.buffer_limit < self.flush_records:
            raise ValueError("buffer_limit must be at least flush_records")
