"""The newcomer level: the README followed as written, on the defaults.

An operator's first week happens on a node nobody configured: `./setup.sh
--no-test`, then `.venv/bin/fognode serve` with no upstream named, one
worker per core, the data directory under the operator's home. Tests
elsewhere start nodes with the settings they need; the tests here start
them only with the README's own commands (readme.py runs them as typed),
on a LAN of network namespaces the session creates: ``node`` is the
machine that runs fognode (nothing listens at Ollama's address there, so
the node picks its embedded model), ``laptop`` another machine on the LAN.
Each has a home of its own and nothing else.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.netns import Lan, unavailable_reason
from tests.support.processes import Process
from tests.system.newcomer import readme
from tests.system.newcomer.readme import Machine

REASON = unavailable_reason()


@dataclass
class Newcomer:
    lan: Lan
    node: Machine  # where fognode runs, set up by the README's first command
    laptop: Machine  # another machine on the LAN, with nothing set up


@pytest.fixture(scope="session")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Newcomer]:
    """The LAN, and the node machine after `./setup.sh --no-test`."""
    if REASON is not None:
        pytest.skip(REASON)
    lan = Lan.create(subnet=secrets.randbelow(200) + 20)
    try:
        homes = tmp_path_factory.mktemp("newcomer")
        node = Machine(lan.a, homes / "node-home")
        laptop = Machine(lan.b, homes / "laptop-home")
        for machine in (node, laptop):
            machine.home.mkdir()
        node.run(readme.command("./setup.sh --no-test"), timeout=300)
        yield Newcomer(lan, node, laptop)
    finally:
        lan.destroy()


@dataclass
class Served:
    """A node a README command started, and what it said."""

    proc: Process
    machine: Machine

    def log(self) -> str:
        return self.proc.log()

    def exited(self) -> str | None:
        """Its last words when it has exited, else None."""
        return None if self.proc.alive else self.log()[-4000:]

    def wait_for(self, text: str, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while text not in self.log():
            assert self.proc.alive, f"the node exited:\n{self.log()[-4000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.log()[-4000:]}"
            time.sleep(0.1)


def serve(machine: Machine, text: str) -> Iterator[Served]:
    """Start a README serve command and wait until the node is ready (its
    model loaded: /readyz answers 200), then stop it at the end."""
    served = Served(machine.start(text), machine)
    try:
        machine.wait_ready(8443, served.exited)
        served.wait_for("fognode listening on")
        yield served
    finally:
        served.proc.stop()


@pytest.fixture
def laptop_home(newcomer: Newcomer, tmp_path: Path) -> Path:
    """The laptop's home, given the node's CA as the README says (copied over)."""
    ca = newcomer.node.data / "certs" / "export" / "fognode-ca.crt"
    (newcomer.laptop.home / "fognode-ca.crt").write_bytes(ca.read_bytes())
    return newcomer.laptop.home
