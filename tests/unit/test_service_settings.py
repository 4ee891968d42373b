"""What the installed service runs with, read the way systemd gives it, and who can start it.

`fognode --node service COMMAND` runs a command with the service's settings:
the unit's Environment= line, overridden by /etc/fognode/env (as systemd
does). `fognode service install` refuses a service whose user could not
reach the venv (a checkout under /root, mode 0700), instead of leaving a
unit that fails at start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fognode.gateway.node.service import (
    UnitOptions,
    closed_to,
    read_unit_environment,
    render_unit,
)


def test_the_unit_environment_is_read_as_systemd_reads_it(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text(
        '# a comment\n; another\nFOGNODE_PORT=8443\nFOGNODE_LOG_FORMAT="json"\n'
        "FOGNODE_UPSTREAM_URL=http://10.0.0.2:11434\n"
    )
    unit = tmp_path / "fognode.service"
    text = render_unit(UnitOptions(executable=Path("/opt/fognode/.venv/bin/fognode")))
    unit.write_text(text.replace("EnvironmentFile=-/etc/fognode/env", f"EnvironmentFile=-{env}"))
    found = read_unit_environment(unit)
    assert found["XDG_DATA_HOME"] == "/var/lib"
    assert found["FOGNODE_CERTS_DIR"] == "/var/lib/fognode-tls"
    assert found["FOGNODE_HOST"] == "*"
    assert found["FOGNODE_PORT"] == "8443"  # the env file wins, as in systemd
    assert found["FOGNODE_LOG_FORMAT"] == "json"
    assert found["FOGNODE_UPSTREAM_URL"] == "http://10.0.0.2:11434"
    env.unlink()  # optional ("-"): the unit alone
    assert read_unit_environment(unit)["FOGNODE_PORT"] == "443"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can enter (pytest's own are 0700)."""
    made = Path(tempfile.mkdtemp(prefix="fognode-open-"))
    made.chmod(0o755)
    yield made
    shutil.rmtree(made)


def test_a_venv_the_service_user_cannot_enter_is_found(open_dir: Path) -> None:
    home = open_dir / "home"
    venv = home / "checkout" / ".venv" / "bin"
    venv.mkdir(parents=True)
    command = venv / "fognode"
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    home.chmod(0o700)  # root's home, say
    assert closed_to("nobody", command) == home
    assert closed_to("root", command) is None
    home.chmod(0o711)
    assert closed_to("nobody", command) is None
    command.chmod(0o700)
    assert closed_to("nobody", command) == command


def test_install_with_root_and_no_such_user_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: a KeyError traceback (the users exist only when installing into /)."""
    from fognode.gateway.cli import main

    if os.geteuid() != 0:
        pytest.skip("service install needs root (it refuses otherwise)")
    code = main(["service", "install", "--root", str(tmp_path), "--user", "no-such-user-x"])
    assert code == 1
    said = capsys.readouterr().err
    assert "no user 'no-such-user-x'" in said and "--user NAME" in said, said
    assert not (tmp_path / "etc").exists() and not (tmp_path / "var").exists()
