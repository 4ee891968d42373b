"""What every level needs: no test touches its runner's data or leaks firebase-admin's switch.

The levels keep their own fixtures: tests/unit/conftest.py,
tests/gateway/conftest.py and tests/system/conftest.py import from
tests/support/ only what their tests use, so a unit test needs neither a
browser nor an emulator nor PostgreSQL installed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# No test reads or writes the data directory of whoever runs the suite
# (~/.local/share/fognode: their node's keys, certificates, usage records,
# session key): everything that falls back to the defaults lands here instead,
# in this process and in the processes tests start with its environment.
DATA_HOME = tempfile.mkdtemp(prefix="fognode-tests-data-")
os.environ["XDG_DATA_HOME"] = DATA_HOME
# No node a test starts joins a fog unless the test says so: every test PKI
# holds node credentials (tests/support/pki.py, as setup.sh leaves a node), and
# nodes on one machine would take the same peer port. The fog's tests turn it on.
os.environ["FOGNODE_FOG"] = "off"


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(DATA_HOME, ignore_errors=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """A test file left in tests/ itself would not run (testpaths names the levels)."""
    stray = sorted(p.name for p in Path(__file__).parent.glob("test_*.py"))
    if stray:
        raise pytest.UsageError(
            f"tests/{', tests/'.join(stray)}: move into tests/unit, tests/gateway or "
            "tests/system (the level it needs), helpers into tests/support"
        )


@pytest.fixture(autouse=True)
def _isolate_firebase_emulator_env() -> Iterator[None]:
    """firebase-admin's emulator switch is process-wide; no test may leak it.

    Autouse fixtures are set up first and torn down last, so this restores the
    variable after every gateway and operator SDK app of the test is closed.
    """
    name = "FIREBASE_AUTH_EMULATOR_HOST"
    before = os.environ.get(name)
    yield
    if before is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = before
