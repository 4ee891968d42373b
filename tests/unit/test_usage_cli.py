"""`fognode usage` on a SQLite file and on PostgreSQL, as an operator runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fognode.gateway.cli import main
from fognode.usage.options import StoreOptions
from fognode.usage.when import parse_when
from tests.support.usage import NOON, RANGE, populate


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    path = tmp_path / "usage.sqlite3"
    populate(StoreOptions(sqlite_path=path))
    return path


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert main(["usage", *args, "--json"]) == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


def test_json_per_user(sqlite_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, "--sqlite", str(sqlite_file), *RANGE)
    assert result["since"] == "2026-03-14T00:00:00Z"
    assert result["totals"] == [
        {
            "uid": "alice",
            "requests": 2,
            "rejected": 0,
            "partial": 1,
            "prompt_tokens": 110,
            "completion_tokens": 920,
            "total_tokens": 1030,
        },
        {
            "uid": "apikey:ci",
            "requests": 1,
            "rejected": 1,
            "partial": 0,
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "total_tokens": 3,
        },
    ]


def test_json_per_model_for_one_user(sqlite_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(
        capsys, "--sqlite", str(sqlite_file), *RANGE, "--by", "model", "--user", "alice"
    )
    totals = result["totals"]
    assert isinstance(totals, list)
    assert [(t["model"], t["total_tokens"]) for t in totals] == [("a", 1000), ("b", 30)]


def test_the_table(sqlite_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["usage", "--sqlite", str(sqlite_file), *RANGE, "--by", "user-model"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Usage from 2026-03-14T00:00:00Z to 2026-03-15T00:00:00Z (UTC)"
    assert lines[1].split() == [
        "USER",
        "MODEL",
        "REQUESTS",
        "REJECTED",
        "PARTIAL",
        "PROMPT",
        "COMPLETION",
        "TOTAL",
    ]
    assert lines[2].split() == ["alice", "a", "1", "0", "0", "100", "900", "1,000"]
    assert lines[-1].split() == ["(all)", "3", "1", "1", "111", "922", "1,033"]


def test_an_empty_range_and_a_missing_file(
    sqlite_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "usage",
                "--sqlite",
                str(sqlite_file),
                "--since",
                "2020-01-01",
                "--until",
                "2020-01-02",
            ]
        )
        == 0
    )
    assert "nothing recorded" in capsys.readouterr().out
    assert run_json(capsys, "--sqlite", str(tmp_path / "absent.sqlite3"))["totals"] == []
    assert not (tmp_path / "absent.sqlite3").exists()  # looking does not create it


def test_bad_times_are_refused(sqlite_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["usage", "--sqlite", str(sqlite_file), "--since", "yesterday-ish"]) == 2
    assert "not 'today', 'now', a span" in capsys.readouterr().err


def test_parse_when() -> None:
    now = NOON
    assert parse_when("now", now=now) == now
    assert parse_when("90m", now=now) == now - 5400
    assert parse_when("7d", now=now) == now - 7 * 86400
    assert parse_when("today", now=now) == NOON - 12 * 3600
    assert parse_when("2026-03-14T13:00:00+01:00", now=now) == NOON
