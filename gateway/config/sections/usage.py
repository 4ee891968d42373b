"""Usage and quotas: the usage records and the limits counted from them (usage/).

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from datetime import time
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)

from ..paths import (
    default_usage_file,
)


class QuotaTier(BaseModel):
    """One tier's limits in quota_tiers (0 or absent: no limit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens_per_day: int = Field(0, ge=0)
    requests_per_minute: int = Field(0, ge=0)


class UsageSettings(BaseModel):
    """Usage and quotas: the usage records and the limits counted from them (usage/)."""

    usage_accounting: bool = Field(
        True,
        description="Record every inference request (user, model, tokens, outcome; never a "
        "prompt, an answer or a credential) in the usage store. Quotas need it.",
    )
    usage_database_url: SecretStr | None = Field(
        None,
        description="`postgresql://user:password@host/db`: keep usage in PostgreSQL, shared by "
        "several nodes so that they enforce one budget per user. Default: SQLite in "
        "`usage_sqlite_path`. A secret: masked by `fognode config`, never logged.",
    )
    usage_sqlite_path: Path = Field(
        default_factory=default_usage_file,
        description="The embedded usage store (SQLite, WAL), used unless "
        "`usage_database_url` is set.",
    )
    usage_flush_records: int = Field(
        100, ge=1, description="Usage records written in one batch (one transaction)."
    )
    usage_flush_seconds: float = Field(
        1.0,
        gt=0,
        description="Longest a usage record waits for its batch; a `kill -9` loses at most "
        "what waited.",
    )
    usage_buffer_limit: int = Field(
        10_000,
        ge=1,
        description="Usage records kept in memory while the store is unreachable; beyond it "
        "new ones are dropped (and counted in `fognode_usage_records_dropped_total`).",
    )
    quota_tokens_per_day: int = Field(
        0,
        ge=0,
        description="Tokens (prompt + completion) one user may use per day (0: no limit). "
        "Beyond: 429 `insufficient_quota`.",
    )
    quota_requests_per_minute: int = Field(
        0,
        ge=0,
        description="Inference requests one user may start per sliding minute (0: no limit). "
        "Beyond: 429 `rate_limit_exceeded`.",
    )
    quota_tiers: dict[str, QuotaTier] = Field(
        default_factory=dict,
        description='Limits per tier, as JSON: `{"staff": {"tokens_per_day": 0, '
        '"requests_per_minute": 600}, "guest": {"tokens_per_day": 20000}}` (0 or absent: no '
        "limit). A user's tier is their `quota_tier_claim`, an API key's "
        "`quota_api_key_tiers`.",
    )
    quota_tier_claim: str = Field(
        "fog_tier",
        min_length=1,
        description="Firebase custom claim that names a user's tier (`fognode claims set UID "
        "fog_tier=staff`).",
    )
    quota_api_key_tiers: dict[str, str] = Field(
        default_factory=dict,
        description='Tier of each API key, by key name, as JSON: `{"ci": "staff"}`; each tier '
        "must be defined in `quota_tiers`.",
    )
    quota_day_start: time = Field(
        time(0, 0),
        description="When the daily token budget resets, as HH:MM in UTC.",
    )
    quota_default_completion_tokens: int = Field(
        512,
        ge=1,
        description="What a request that sets no `max_tokens` is assumed to generate when it is "
        "admitted (its reservation against the daily budget; settled with the real count).",
    )
    quota_warn_at: float = Field(
        0.8,
        ge=0,
        le=1,
        description="The share of a budget (tokens per day, requests per minute) from which "
        "a request is warned in its `x-fognode-quota-warning` header (`tokens 85%`), the "
        "operator once per budget and period in the log, and the status page lists the user "
        "until it resets. 0: never.",
    )
    usage_metrics_per_user: bool = Field(
        False,
        description="Label the token counters in `/metrics` by user as well as by model (one "
        "series per user: mind the cardinality).",
    )

    @field_validator("usage_database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            # The value is a secret: the message does not quote it.
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("quota_day_start")
    @classmethod
    def _utc_day_start(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("give HH:MM in UTC, without an offset")
        return value
