"""The README as a test: every command it tells a reader to run is run here, and its claims hold.

The commands themselves run in the other tests of this level (readme.RUN
says which); this file checks the registry against the README both ways,
and what the README tells an iOS developer against the code: the model
name of the embedded default, the API-key form with its warning, and where
port 443 without systemd is explained.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from fognode.embedded.options import DEFAULT_MODEL
from tests.system.newcomer import readme

HERE = Path(__file__).parent


def test_every_readme_command_is_run_by_a_test_or_says_why_not() -> None:
    firsts = [b.first for b in readme.blocks()]
    assert len(firsts) == len(set(firsts)), "two README blocks begin alike: tell them apart"
    known = set(readme.RUN) | set(readme.NOT_RUN)
    assert not set(firsts) - known, f"README commands no test runs: {set(firsts) - known}"
    assert not known - set(firsts), f"registered commands the README lacks: {known - set(firsts)}"
    assert set(readme.NOT_RUN).isdisjoint(readme.RUN)


def test_the_tests_named_in_the_registry_exist() -> None:
    for where in readme.RUN.values():
        module, _, name = where.partition("::")
        name = name.split(" ")[0]
        tree = ast.parse((HERE / module).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in defined, f"{where}: no such test or fixture"


def test_the_quick_start_tells_a_server_to_set_up_without_the_test_tools() -> None:
    quick = readme.block("./setup.sh --no-test")
    assert quick.lines == ("./setup.sh --no-test", ".venv/bin/fognode serve")
    # The laptop's install is the command line only, and the README says so.
    assert readme.block("./setup.sh --cli").lines[0] == "./setup.sh --cli"
    text = " ".join(readme.README.read_text().split())
    assert "`./setup.sh --cli` in a checkout installs only the command line" in text
    # The front door stays short: the manual is in docs/.
    assert len(readme.README.read_text().splitlines()) <= 300


def section(title: str) -> str:
    text = readme.README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_the_spezillmfog_section_tells_an_ios_developer_what_to_write() -> None:
    """Issue item 9: which model string for the embedded default (not a case
    of the app's FogModelType: the String form), the API-key form and its
    warning, and port 443 without systemd."""
    text = section("Connect the SpeziLLMFog app")
    swift = re.search(r"```swift\n(.*?)```", text, re.S)
    assert swift is not None
    code = swift.group(1)
    assert f'modelType: "{DEFAULT_MODEL}"' in code  # the String form, the node's default
    assert '.constant("fnk_' in code  # an API key instead of Firebase
    assert "can extract it" in text and "apikey revoke" in text
    assert "FogModelType" in text
    assert "(docs/deployment.md#without-systemd)" in text
    deployment = (readme.README.parent / "docs" / "deployment.md").read_text()
    without = deployment[deployment.index("### Without systemd") :]
    without = without[: without.index("\n## ")]
    for way in ("setcap", "REDIRECT", "macOS"):
        assert way in without, way
