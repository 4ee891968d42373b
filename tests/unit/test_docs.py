"""The documentation holds together: the configuration reference is the
settings model's own.

A reference written by hand goes stale the day a setting changes; checking
it is cheap, noticing it later is not.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fognode.gateway.config import reference

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"


def test_configuration_reference_is_generated_from_the_settings() -> None:
    assert CONFIGURATION.read_text() == reference.render(), (
        "docs/configuration.md differs from the settings model's descriptions; "
        f"regenerate it: {reference.REGENERATE}"
    )


def test_every_setting_has_a_description() -> None:
    assert reference.missing_descriptions() == [], (
        "every setting needs a description (Field(description=...)) in gateway/config/sections/"
    )


def test_every_setting_is_in_the_reference_once() -> None:
    listed = re.findall(r"^\| `(FOGNODE_[A-Z0-9_]+)`", CONFIGURATION.read_text(), re.MULTILINE)
    expected = [
        reference.ENV_PREFIX + name.upper()
        for section in reference.sections()
        for name, _ in reference.own_fields(section)
    ]
    assert sorted(listed) == sorted(expected)
    assert len(set(listed)) == len(listed)
    from fognode.gateway.config.settings import Settings

    assert len(listed) == len(Settings.model_fields), "a setting outside every section"


def test_the_reference_is_the_same_on_every_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Paths under the data directory print as <data dir>/..., never as this machine's."""
    first = reference.render()
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert reference.render() == first
    assert str(Path.home()) not in first
    assert "`<data dir>/certs`" in first


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Trusting the CA on iOS and Android", "trusting-the-ca-on-ios-and-android"),
        ("Port 443", "port-443"),
        ("The embedded model (`bench/embedded.py`)", "the-embedded-model-benchembeddedpy"),
        ("`fognode models`", "fognode-models"),
        ("What's new?", "whats-new"),
        ("The operator's pages", "the-operators-pages"),
        ("Usage, quotas and admission", "usage-quotas-and-admission"),
        ("snake_case and dash-case", "snake_case-and-dash-case"),
    ],
)
def test_anchors_follow_githubs_rules(heading: str, anchor: str) -> None:
    assert reference.anchor(heading) == anchor
