"""The documentation holds together: the configuration reference is the
settings model's own, and every link in the README and docs/ lands somewhere.

A reference written by hand goes stale the day a setting changes, and a
broken anchor is invisible until a reader clicks it; both are cheap to check
and expensive to notice later.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fognode.gateway.config import reference

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = ROOT / "docs" / "configuration.md"


def documents() -> list[Path]:
    """The pages a user reads: the README, ARCHITECTURE.md and every page of docs/."""
    return [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]


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


_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_CODE_SPAN = re.compile(r"`+[^`]*`+")


def _prose_lines(page: Path) -> list[tuple[int, str]]:
    """The page's lines outside fenced code blocks, with their numbers."""
    lines, fenced = [], False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def anchors_of(page: Path) -> set[str]:
    """Every anchor GitHub makes for the page's headings (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    anchors = set()
    for _, line in _prose_lines(page):
        match = _HEADING.match(line)
        if not match:
            continue
        # A link in a heading counts by its text.
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2))
        base = reference.anchor(text)
        count = seen.get(base, 0)
        seen[base] = count + 1
        anchors.add(base if count == 0 else f"{base}-{count}")
    return anchors


def links_of(page: Path) -> list[tuple[int, str]]:
    """Every link and image target of the page, outside code."""
    found = []
    for number, line in _prose_lines(page):
        for match in _LINK.finditer(_CODE_SPAN.sub("", line)):
            found.append((number, match.group(1)))
    return found


def broken_links(page: Path) -> list[str]:
    problems = []
    for number, target in links_of(page):
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # a web address, not a place in the repository
        path_part, _, fragment = target.partition("#")
        file = (page.parent / path_part).resolve() if path_part else page
        if not file.is_relative_to(ROOT):
            problems.append(f"{where} points outside the repository")
            continue
        if not file.exists():
            problems.append(f"{where}: no such file")
            continue
        if fragment:
            if file.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif fragment not in anchors_of(file):
                problems.append(f"{where}: no heading makes #{fragment} in {file.name}")
    return problems


def test_the_link_checker_sees_a_broken_anchor(tmp_path: Path) -> None:
    """The checker itself: a page with one good and three bad links (else it proves nothing)."""
    page = ROOT / "docs" / "_linkcheck_probe.md"
    page.write_text(
        "# Title\n\n## Port 443\n\n[good](#port-443) [case](#Port-443) [gone](nothere.md) "
        "[out](../../elsewhere.md)\n\n```\n[in code](#ignored)\n```\n"
    )
    try:
        problems = broken_links(page)
    finally:
        page.unlink()
    assert len(problems) == 3, problems
    assert any("#Port-443" in p for p in problems)
    assert any("no such file" in p for p in problems)
    assert any("outside the repository" in p for p in problems)


@pytest.mark.parametrize("page", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


@pytest.mark.parametrize("page", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_figures_of_one_run_outside_bench(page: Path) -> None:
    """Timings of one session or issue belong in bench/README.md, with their method."""
    text = page.read_text()
    for phrase in (r"\bthis session\b", r"\bIssue \d+\b", r"\bfinal\)"):
        assert not re.search(phrase, text, re.IGNORECASE), f"{phrase} in {page.name}"
