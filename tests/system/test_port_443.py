"""Port 443 without root: the systemd unit, and the capability it relies on.

The SpeziLLMFog app always connects to 443 (80 in development mode).
`fognode service install` runs fognode as an unprivileged user with the one
capability CAP_NET_BIND_SERVICE, as an ambient capability. systemd is not
running on the test machine, so the unit is checked with systemd-analyze,
and what it does at start is done with setpriv (util-linux), which sets the
same ambient capability for the same kind of user, inside a network
namespace where binding 443 is allowed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import unavailable_reason
from tests.support.processes import ROOT, Process

FOGNODE = [sys.executable, "-m", "fognode.gateway.cli"]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FOGNODE, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_unit_grants_one_capability_to_an_unprivileged_user(tmp_path: Path) -> None:
    out = run("service", "unit")
    assert out.returncode == 0, out.stderr
    unit = out.stdout
    assert "User=fognode\n" in unit
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE\n" in unit
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" in unit
    assert "NoNewPrivileges=true\n" in unit
    assert "serve --host * --port 443\n" in unit
    assert "serve --host * --port 80 --no-tls\n" in run("service", "unit", "--no-tls").stdout
    path = tmp_path / "fognode.service"
    path.write_text(unit)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in verify.stderr.splitlines()
        if "Unknown" in line or "Failed" in line or "Invalid" in line
    ]
    assert verify.returncode == 0 and not problems, verify.stderr


def test_install_writes_the_state_dir_the_env_file_and_the_unit(tmp_path: Path) -> None:
    mine = tmp_path / "data"
    (mine / "certs").mkdir(parents=True)
    (mine / "certs" / "ca.crt").write_text("CA")
    (mine / "api-keys").write_text("admin:admin:" + "0" * 64 + "\n")
    root = tmp_path / "root"
    out = run(
        "service",
        "install",
        "--root",
        str(root),
        "--user",
        "nobody",
        "--from-data-dir",
        str(mine),
    )
    assert out.returncode == 0, out.stderr
    state = root / "var/lib/fognode"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert (state / "certs" / "ca.crt").read_text() == "CA"
    assert (state / "api-keys").read_text().startswith("admin:admin:")
    import pwd

    assert state.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert (root / "etc/fognode/env").read_text().startswith("# Settings for the fognode service")
    unit = (root / "etc/systemd/system/fognode.service").read_text()
    assert "User=nobody\n" in unit
    assert "systemctl daemon-reload && systemctl enable --now fognode" in out.stdout

    # Again: the operator's own edits and state are kept.
    (root / "etc/fognode/env").write_text("FOGNODE_LOG_FORMAT=json\n")
    assert run("service", "install", "--root", str(root), "--user", "nobody").returncode == 0
    assert (root / "etc/fognode/env").read_text() == "FOGNODE_LOG_FORMAT=json\n"


REASON = unavailable_reason()


@pytest.fixture
def sandbox() -> Iterator[tuple[str, Path]]:
    """A network namespace, and a directory the unprivileged user may use."""
    if REASON is not None:
        pytest.skip(REASON)
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is missing")
    netns = f"fn443{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    # pytest's tmp_path is private to root; this one is reachable for nobody.
    directory = Path(tempfile.mkdtemp(prefix="fognode-443-"))
    directory.chmod(0o755)
    (directory / "data").mkdir(mode=0o777)
    (directory / "data").chmod(0o777)
    try:
        yield netns, directory
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


def _first_closed(path: Path) -> Path | None:
    return next((d for d in reversed(path.parents) if not d.stat().st_mode & stat.S_IXOTH), None)


def as_nobody(netns: str, directory: Path, capability: bool) -> list[str]:
    """fognode as user nobody on port 443, with or without the capability.

    The interpreter of this venv may live under a directory nobody cannot
    enter (root's home, mode 700, with pyenv); a private mount namespace
    shows nobody a traversable copy of that path.
    """
    python = Path(sys.executable)
    needed = (python.resolve(), python.parent, ROOT)
    # For each path nobody needs, the first directory on it nobody may enter.
    closed = {d for p in needed if (d := _first_closed(p)) is not None}
    mounts = ""
    for index, home in enumerate(sorted(closed)):
        shadow = directory / f"shadow{index}"
        shadow.mkdir(exist_ok=True)
        shadow.chmod(0o711)
        tops = {home / p.relative_to(home).parts[0] for p in needed if p.is_relative_to(home)}
        for top in sorted(tops):
            (shadow / top.name).mkdir(exist_ok=True)
            mounts += f"mount --bind {top} {shadow / top.name} && "
        mounts += f"mount --rbind {shadow} {home} && "
    caps = "--inh-caps=+net_bind_service --ambient-caps=+net_bind_service " if capability else ""
    command = (
        f"{mounts}exec setpriv --reuid=nobody --regid=nogroup --clear-groups {caps}-- "
        f"env HOME={directory / 'data'} XDG_DATA_HOME={directory / 'data'} FOGNODE_MDNS=false "
        f"{python} -m fognode.gateway.cli serve --no-tls --auth none --port 443"
    )
    return ["ip", "netns", "exec", netns, "unshare", "--mount", "sh", "-c", command]


def test_an_unprivileged_user_with_the_capability_serves_443(
    sandbox: tuple[str, Path],
) -> None:
    netns, directory = sandbox
    node = Process(as_nobody(netns, directory, capability=True), log_file=directory / "node.log")
    try:
        answer = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and node.alive:
            probe = subprocess.run(
                ["ip", "netns", "exec", netns, "curl", "-s", "http://127.0.0.1:443/healthz"],
                capture_output=True,
                text=True,
            )
            answer = probe.stdout
            if answer:
                break
            time.sleep(0.2)
        assert '"status": "ok"' in answer
        user = subprocess.run(
            ["ps", "-o", "user=", "-p", str(_server_pid(node.pid))], capture_output=True, text=True
        )
        assert user.stdout.strip() == "nobody"
    finally:
        code = node.stop(limit=30)
    assert code == 0, node.log()


def test_without_the_capability_binding_443_says_how_to_get_it(
    sandbox: tuple[str, Path],
) -> None:
    netns, directory = sandbox
    out = subprocess.run(
        as_nobody(netns, directory, capability=False),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "cannot listen on 127.0.0.1:443" in out.stderr
    assert "CAP_NET_BIND_SERVICE" in out.stderr
    assert "fognode service install" in out.stderr
    assert "Traceback" not in out.stderr


def _server_pid(pid: int) -> int:
    """The Python process under `ip netns exec ... exec setpriv ... env ...`."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    while children.exists() and (kids := children.read_text().split()):
        pid = int(kids[0])
        children = Path(f"/proc/{pid}/task/{pid}/children")
    return pid
