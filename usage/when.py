"""Moments as people write them (``today``, ``24h``, an ISO date) and as reports print them.

Shared by ``fognode usage`` and the gateway's usage report, so both read
``--since 7d`` and ``?since=7d`` the same way.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .quota import day_bounds

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_when(text: str, *, now: float, day_start: timedelta = timedelta(0)) -> float:
    """A point in time from the command line, as Unix seconds."""
    if text == "now":
        return now
    if text == "today":
        return day_bounds(now, day_start)[0]
    match = _DURATION.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not 'today', 'now', a span like 24h or 7d, or an ISO date"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso_utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")
