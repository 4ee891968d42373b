"""The store's interface and the answers it gives.

Two backends implement it: :class:`~.sqlite_store.SqliteStore` (embedded,
the default) and :class:`~.postgres_store.PostgresStore` (one database
shared by several nodes). :func:`~.backends.open_store` picks one from the options.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .record import Outcome, UsageRecord


class Grouping(enum.Enum):
    USER = ("uid",)
    MODEL = ("model",)
    USER_MODEL = ("uid", "model")


@dataclass(frozen=True, slots=True)
class Total:
    """Sums over a time range for one user, one model, or one user and model.

    ``requests`` excludes rejected ones, which ``rejected`` counts;
    ``partial`` counts answers that ended early.
    """

    uid: str | None
    model: str | None
    requests: int
    rejected: int
    partial: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_json(self) -> dict[str, object]:
        """The figures as `fognode usage --json` and ``GET /admin/usage`` show them."""
        return {
            **({"uid": self.uid} if self.uid is not None else {}),
            **({"model": self.model} if self.model is not None else {}),
            "requests": self.requests,
            "rejected": self.rejected,
            "partial": self.partial,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class UserWindow:
    """One user's recorded usage for a quota check (in-flight requests and
    records not yet flushed are added by the ledger)."""

    tokens_today: int
    requests_last_minute: int
    oldest_request: float | None
    newest_request: float | None


def first_whole_minute(day_start: float) -> int:
    """The first minute bucket (``floor(t / 60)``) that starts at or after
    ``day_start``: the quota check sums ``usage_minutes`` from it, and the
    records of ``[day_start, 60 * it)`` one by one (none when the day starts
    on a whole minute, as an HH:MM setting does; with seconds, less than one
    minute's worth), so the day's tokens are exact for any start."""
    minute = math.floor(day_start) // 60
    return minute if minute * 60 >= day_start else minute + 1


def totals_query(
    by: Grouping,
    *,
    with_uid: bool,
    time: Callable[[int], str],
    param: Callable[[int], str],
) -> str:
    """The totals query in both dialects: ``time(n)`` and ``param(n)`` write the
    n-th parameter as a timestamp and as a plain value. Parameters: since,
    until, and the uid when ``with_uid``."""
    columns = ", ".join(by.value)
    where = f"started_at >= {time(1)} AND started_at < {time(2)}"
    if with_uid:
        where += f" AND uid = {param(3)}"
    rejected = f"outcome = '{Outcome.REJECTED}'"
    return f"""
        SELECT {columns},
            COUNT(*) FILTER (WHERE NOT ({rejected})), COUNT(*) FILTER (WHERE {rejected}),
            COUNT(*) FILTER (WHERE partial), SUM(prompt_tokens), SUM(completion_tokens)
        FROM usage_records WHERE {where}
        GROUP BY {columns}
        ORDER BY SUM(prompt_tokens + completion_tokens) DESC, {columns}
    """


def total_from_row(by: Grouping, row: Sequence[object]) -> Total:
    """A :class:`Total` from a row of the group columns, then requests,
    rejected, partial, prompt and completion sums (both backends' order)."""
    keys = dict(zip(by.value, row, strict=False))
    numbers = [int(str(value)) for value in row[len(by.value) :]]
    uid, model = keys.get("uid"), keys.get("model")
    return Total(
        uid=uid if isinstance(uid, str) else None,
        model=model if isinstance(model, str) else None,
        requests=numbers[0],
        rejected=numbers[1],
        partial=numbers[2],
        prompt_tokens=numbers[3],
        completion_tokens=numbers[4],
    )


class UsageStore(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date (safe to race with other openers)."""

    async def close(self) -> None: ...

    async def schema_version(self) -> int: ...

    async def write(self, records: Sequence[UsageRecord]) -> None:
        """Write a batch in one transaction; a record already stored (same
        ``record_id``) is skipped, so a retried batch counts once."""

    async def user_window(self, uid: str, *, day_start: float, minute_start: float) -> UserWindow:
        """Tokens of ``uid`` since ``day_start`` and requests since ``minute_start``."""

    async def totals(
        self, *, since: float, until: float, by: Grouping, uid: str | None = None
    ) -> list[Total]:
        """Sums per group of records started in ``[since, until)``, largest first."""
