"""The one reading of moments and spans (moments/): key expiry, usage ranges
and Ollama's expiry times must agree on what a zone-less moment means and
print one form."""

from __future__ import annotations

import pytest

from fognode.moments import iso_utc, parse_moment, parse_span


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("90m", 5_400), ("12h", 43_200), ("7d", 604_800), ("2w", 1_209_600)],
)
def test_spans_in_every_unit(text: str, seconds: float) -> None:
    assert parse_span(text) == seconds
    assert parse_span(text.upper()) == seconds


def test_a_span_may_be_fractional_and_anything_else_is_not_a_span() -> None:
    assert parse_span("1.5h") == 5_400
    for text in ("", "h", "7", "7y", "-1d", "2027-01-06", "1e3s"):
        assert parse_span(text) is None, text


def test_moments_with_a_zone_without_one_and_with_nanoseconds() -> None:
    assert parse_moment("2027-01-06T12:00:00Z") == 1_799_236_800
    assert parse_moment("2027-01-06T12:00:00") == 1_799_236_800  # no zone: UTC
    assert parse_moment("2027-01-06T13:00:00+01:00") == 1_799_236_800
    assert parse_moment("2027-01-06") == 1_799_193_600
    # Go's nine fractional digits (Ollama's expires_at) read to the microsecond.
    assert parse_moment("2025-06-04T14:38:31.837530019-07:00") == pytest.approx(
        1_749_073_111.837530
    )
    for text in ("soon", "2027-13-01", ""):
        with pytest.raises(ValueError):
            parse_moment(text)


def test_one_printed_form_that_reads_back() -> None:
    assert iso_utc(1_799_236_800) == "2027-01-06T12:00:00Z"
    assert iso_utc(1_799_236_800.9) == "2027-01-06T12:00:00Z"  # to the second
    assert parse_moment(iso_utc(1_799_236_800)) == 1_799_236_800
