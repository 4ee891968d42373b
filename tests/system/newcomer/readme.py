"""The README's commands, as a newcomer runs them: read from README.md, run as written.

A README example is a test: every `sh` block of README.md is either run by
a test of this level (``RUN``: its first line, and the test that runs it)
or named in ``NOT_RUN`` with the reason. test_readme.py checks both ways,
so a command added to the README without a test fails the suite, and so
does a test that names a command the README no longer has.

A command runs the way a newcomer types it: in the checkout (``./setup.sh``,
``.venv/bin/fognode``), in a clean environment whose HOME is the test's own
(the defaults under ``~/.local/share/fognode``, nothing else configured),
inside the network namespace of the machine it plays. The only changes to
the text: ``.venv/`` becomes this run's venv when it lives elsewhere
(FOGNODE_VENV), and ``sudo`` is dropped (the suite runs as root).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.netns import Host
from tests.support.processes import ROOT, Process

README = ROOT / "README.md"
VENV = Path(sys.prefix)

# Each README command the newcomer level runs: its first line, and where.
RUN: dict[str, str] = {
    "./setup.sh --no-test": "conftest.py::newcomer (every test of this level)",
    "CA=~/.local/share/fognode/certs/export/fognode-ca.crt": (
        "test_quick_start.py::test_the_readme_curl_streams_the_embedded_model"
    ),
    ".venv/bin/fognode serve --host '*'": "test_lan.py::lan_node",
    ".venv/bin/fognode certs qr": "test_lan.py::test_certs_qr_is_the_running_pages_link",
    "./setup.sh --cli": "test_lan.py::test_a_laptop_with_the_cli_only_chats_with_the_lan_node",
    ".venv/bin/fognode apikey create phone": (
        "test_quick_start.py::test_a_key_made_and_one_revoked_reach_every_worker"
    ),
    "sudo .venv/bin/fognode service install": (
        "test_service.py::test_the_cli_reaches_the_installed_service_with_one_flag"
    ),
}
# README commands no test runs, and why.
NOT_RUN: dict[str, str] = {
    "./test.sh": "the suite itself: it is what runs these tests",
    "./test.sh unit": "the suite's own levels: CI runs them all, with this one",
}


@dataclass(frozen=True)
class Block:
    """A fenced ``sh`` block of the README: its lines, continuations joined."""

    heading: str  # the section it is in
    text: str
    lines: tuple[str, ...] = field(default=())

    @property
    def first(self) -> str:
        return self.lines[0]


def blocks(path: Path = README) -> list[Block]:
    found: list[Block] = []
    heading = ""
    fence: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if fence is None and line.startswith("#"):
            heading = line.lstrip("#").strip()
        if fence is None and line.strip() == "```sh":
            fence = []
        elif fence is not None and line.strip() == "```":
            text = "\n".join(fence) + "\n"
            found.append(Block(heading, text, tuple(_commands(fence))))
            fence = None
        elif fence is not None:
            fence.append(line)
    return found


def _commands(lines: list[str]) -> list[str]:
    """Logical lines: a trailing backslash continues; comments are dropped."""
    joined: list[str] = []
    current = ""
    for raw in lines:
        line = re.sub(r"\s+#.*$", "", raw) if "#" in raw and "'#'" not in raw else raw
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            joined.append(current.strip())
            current = ""
    return joined


def block(first: str) -> Block:
    """The README block that begins with the line ``first`` (which RUN must
    name: no test runs a README command the registry does not know)."""
    assert first in RUN, f"{first!r} is not in readme.RUN: register the test that runs it"
    matches = [b for b in blocks() if b.first == first]
    assert len(matches) == 1, f"the README has {len(matches)} blocks beginning {first!r}"
    return matches[0]


def command(first: str, index: int = 0) -> str:
    """One command line of the block that begins with ``first``."""
    return block(first).lines[index]


def as_typed(text: str) -> str:
    """The command as this run types it: the venv where it is, no sudo."""
    if VENV != ROOT / ".venv":
        text = text.replace(".venv/", f"{VENV}/")
    return re.sub(r"(^|\n|&& |; )sudo ", r"\1", text)


@dataclass
class Machine:
    """A machine of the newcomer's LAN: a network namespace and a home, and
    what enters its file system when that is a sandbox of its own (``inside``:
    nsenter into a mount namespace, test_service.py)."""

    host: Host
    home: Path
    inside: tuple[str, ...] = ()

    def environment(self, **extra: str) -> list[str]:
        variables = {
            "HOME": str(self.home),
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "FOGNODE_VENV": str(VENV),
            **extra,
        }
        return ["env", "-i", *(f"{k}={v}" for k, v in variables.items())]

    def argv(self, text: str, **extra: str) -> list[str]:
        typed = as_typed(text)
        return self.host.command(*self.inside, *self.environment(**extra), "bash", "-c", typed)

    def run(
        self, text: str, *, timeout: float = 120, check: bool = True, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """Run ``text`` (README lines) to its end, in the checkout."""
        done = subprocess.run(
            self.argv(text, **extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert done.returncode == 0, f"{text!r} exited {done.returncode}:\n{done.stderr}"
        return done

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """curl on this machine (its network, not its sandbox), errors shown."""
        return subprocess.run(
            self.host.command("curl", "-sS", "--max-time", "20", *args),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def status(self, url: str, *args: str) -> str:
        """The HTTP status ``url`` answers here ("000": nothing answered)."""
        return self.curl("-o", "/dev/null", "-w", "%{http_code}", *args, url).stdout

    def wait_ready(self, port: int, exited: Callable[[], str | None], limit: float = 110) -> None:
        """Until the node on ``port`` is ready (its model loaded: /readyz 200);
        ``exited`` gives the node's last words once it has exited, else None."""
        deadline = time.monotonic() + limit
        while self.status(f"https://127.0.0.1:{port}/readyz", "-k") != "200":
            died = exited()
            assert died is None, f"the node exited:\n{died}"
            assert time.monotonic() < deadline, f"not ready on {port}"
            time.sleep(0.3)

    def start(self, text: str, **extra: str) -> Process:
        """Start ``text`` (a README line that serves) in the background."""
        return Process(self.argv(text, **extra))

    @property
    def data(self) -> Path:
        """The data directory the defaults give this machine's user."""
        return self.home / ".local" / "share" / "fognode"
