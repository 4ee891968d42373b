"""Moments and spans of time as people and servers write them, and as fognode prints them.

Several parts read times from text: an API key's expiry (``--expires 30d``
or an ISO moment, and the key file), the usage report's ``--since 7d``,
Ollama's ``expires_at`` (RFC 3339 with nanoseconds). They must agree on
what a moment without a zone means (UTC) and print one form (RFC 3339 in
UTC with ``Z``, which Swift's, JavaScript's and Python's parsers all
read), so the reading and the printing live here once.

A leaf, as safejson/ is: it imports no other part, so that parts which
must not import each other (auth/, usage/, routing/) can all use it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 7 * 86_400}
# Go (Ollama) writes up to nine fractional digits; Python reads six.
_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def parse_span(text: str) -> float | None:
    """``30s``, ``90m``, ``12h``, ``7d``, ``2w`` (or ``1.5h``) as seconds;
    None when the text is not a span."""
    match = _SPAN.match(text.strip().lower())
    if match is None:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_moment(text: str) -> float:
    """An ISO 8601 / RFC 3339 moment (``2027-01-06``, ``2027-01-06T12:00:00Z``,
    ``2025-06-04T14:38:31.837530019-07:00``) as Unix time; without a zone:
    UTC. ValueError when it is not one (the caller says what was expected)."""
    moment = datetime.fromisoformat(_FRACTION.sub(r"\1", text.strip(), count=1))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso_utc(moment: float) -> str:
    """Unix time as RFC 3339 in UTC, to the second: ``2027-01-06T12:00:00Z``."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["iso_utc", "parse_moment", "parse_span"]
