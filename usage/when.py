"""Moments as people write them (``today``, ``24h``, an ISO date) and as reports print them.

Shared by ``fognode usage`` and the gateway's usage report, so both read
``--since 7d`` and ``?since=7d`` the same way; spans, moments and their
printing are the ones every part uses (the moments/ leaf).
"""

from __future__ import annotations

from datetime import timedelta

from ..moments import iso_utc, parse_moment, parse_span
from .quota import day_bounds

__all__ = ["iso_utc", "parse_when"]


def parse_when(text: str, *, now: float, day_start: timedelta = timedelta(0)) -> float:
    """A point in time from the command line, as Unix seconds (a span is
    that long ago)."""
    if text == "now":
        return now
    if text == "today":
        return day_bounds(now, day_start)[0]
    span = parse_span(text)
    if span is not None:
        return now - span
    try:
        return parse_moment(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not 'today', 'now', a span like 24h or 7d, or an ISO date"
        ) from None
