"""The README's service: `sudo .venv/bin/fognode service install`, then the commands reach it.

Issue item 5: after `fognode service install`, the operator's commands
talked to another node: the service keeps /var/lib/fognode and port 443,
the commands ~/.local/share/fognode and 8443. Now `fognode --node service
COMMAND` runs a command with the service's settings (read from its unit as
systemd reads them), and a command without it says which node it reaches.

The install runs for real (`useradd`, /etc/systemd/system, /var/lib) in a
sandbox: a mount namespace of its own whose /etc and /var are overlays on
this machine's, thrown away at the end, inside the node's network
namespace. No systemd runs here, so the service is started the way its
unit says (its user, its environment, its one capability: setpriv), from
the unit file the install wrote.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import ROOT, Process
from tests.support.sandbox import traversable
from tests.system.newcomer import readme
from tests.system.newcomer.conftest import Newcomer
from tests.system.newcomer.readme import Machine

INSTALL = "sudo .venv/bin/fognode service install"


@dataclass
class Sandbox:
    """The node machine with its own /etc and /var (and the venv reachable for
    every user), entered with nsenter; ``root`` is where the overlays keep
    what changed."""

    machine: Machine
    root: Path

    def changed(self, path: str) -> Path:
        """Where a file the sandbox wrote under /etc or /var is kept."""
        top, _, rest = path.strip("/").partition("/")
        return self.root / top / "upper" / rest

    def unit(self) -> dict[str, list[str]]:
        """The installed serving unit's [Service] keys (repeated keys append)."""
        keys: dict[str, list[str]] = {}
        for line in self.changed("/etc/systemd/system/fognode.service").read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                keys.setdefault(name, []).append(value)
        return keys

    def service_argv(self) -> list[str]:
        """The service as its unit starts it: its user and group, its
        environment (Environment=, then the env file), its one capability."""
        unit = self.unit()
        env: dict[str, str] = {}
        for assignments in unit["Environment"]:
            for assignment in shlex.split(assignments):
                name, _, value = assignment.partition("=")
                env[name] = value
        for line in self.changed("/etc/fognode/env").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                name, _, value = line.partition("=")
                env[name] = value
        caps = "-all,+net_bind_service"
        command = (
            f"umask 077 && exec setpriv --reuid={unit['User'][0]} --regid={unit['Group'][0]} "
            f"--init-groups --no-new-privs --inh-caps={caps} --ambient-caps={caps} "
            f"--bounding-set={caps} -- env -i "
            + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
            + f" {unit['ExecStart'][0]}"
        )
        return self.machine.host.command(*self.machine.inside, "sh", "-c", command)


@pytest.fixture(scope="module")
def sandbox(newcomer: Newcomer) -> Iterator[Sandbox]:
    root = Path(tempfile.mkdtemp(prefix="fognode-newcomer-service-"))
    root.chmod(0o711)
    mounts = traversable(root)
    for top in ("etc", "var"):
        for part in ("upper", "work"):
            (root / top / part).mkdir(parents=True)
        mounts += (
            f"mount -t overlay overlay -o lowerdir=/{top},upperdir={root / top / 'upper'},"
            f"workdir={root / top / 'work'} /{top} && "
        )
    # Were systemd running here, the install would start the unit through it.
    mounts += "if [ -d /run/systemd ]; then mount -t tmpfs none /run/systemd; fi && "
    unshare = ["unshare", "--mount", "--propagation", "private"]
    holder = Process(
        newcomer.lan.a.command(*unshare, "sh", "-c", f"{mounts}echo sandboxed && exec sleep 3600")
    )
    try:
        assert any("sandboxed" in line for line in holder.lines(time.monotonic() + 20)), (
            holder.log()
        )
        # In the sandbox's mount namespace, in the checkout (nsenter starts at /).
        inside = ("nsenter", "--target", str(holder.pid), "--mount", f"--wd={ROOT}", "--")
        yield Sandbox(Machine(newcomer.lan.a, newcomer.node.home, inside), root)
    finally:
        holder.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox) -> Sandbox:
    done = sandbox.machine.run(readme.command(INSTALL), timeout=120)
    assert "sudo fognode --node service usage" in done.stdout  # it says how to reach it
    return sandbox


def start_service(sandbox: Sandbox) -> Process:
    return Process(sandbox.service_argv())


def wait_ready(sandbox: Sandbox, service: Process) -> None:
    def exited() -> str | None:
        return None if service.alive else service.log()[-4000:]

    sandbox.machine.wait_ready(443, exited)


def test_the_cli_reaches_the_installed_service_with_one_flag(installed: Sandbox) -> None:
    node = installed.machine
    service = start_service(installed)
    try:
        wait_ready(installed, service)
        # The README's second line: the service's usage, not ~/.local/share's.
        usage = node.run(readme.command(INSTALL, 1))
        assert "Traceback" not in usage.stderr
        # Without the flag, the command says which node it reached.
        mine = node.run(".venv/bin/fognode usage")
        assert "--node service" in mine.stderr

        made = node.run(".venv/bin/fognode --node service apikey create phone")
        assert "/var/lib/fognode/api-keys" in made.stdout
        key = re.search(r"fnk_[A-Za-z0-9_-]{40,}", made.stdout)
        assert key is not None
        owner = node.run("stat -c %U /var/lib/fognode/api-keys").stdout.strip()
        assert owner == "fognode"  # still the service's to read
        ca = installed.changed("/var/lib/fognode-tls/ca.crt")
        trust = ["--cacert", str(ca), "--resolve", "spezillmfog.local:443:127.0.0.1"]
        bearer = ["-H", f"Authorization: Bearer {key.group(0)}"]
        deadline = time.monotonic() + 20
        while (status := node.status("https://spezillmfog.local/v1/models", *trust, *bearer)) != (
            "200"
        ):
            assert time.monotonic() < deadline, status
            time.sleep(0.3)

        listed = node.run(".venv/bin/fognode --node service models list")
        assert "smollm2:135m" in listed.stdout, listed.stderr
        shown = node.run(".venv/bin/fognode --node service certs show")
        node_id = node.run("cat /var/lib/fognode/node-id").stdout.strip()
        assert f"fognode-{node_id[:8]}.local" in shown.stdout
        renewal = node.run(".venv/bin/fognode --node service certs renew", check=False)
        assert renewal.returncode == 2 and "fognode-certs.service" in renewal.stderr

        # The sign-in form names the service's admin key, not a home directory's.
        form = node.curl("-k", "https://127.0.0.1:443/signin").stdout
        assert "/var/lib/fognode/admin-api-key" in form
        assert "~/.local/share" not in form
    finally:
        service.stop()
    assert service.popen is not None and service.popen.returncode == 0, service.log()[-3000:]


def test_an_unreadable_certificate_folder_is_named_as_such(installed: Sandbox) -> None:
    """Issue item 8: the service's user unable to read its certificate folder
    was told `cannot listen on ...: Permission denied` and how to get port 443."""
    node = installed.machine
    node.run("chmod 0700 /var/lib/fognode-tls")
    try:
        service = start_service(installed)
        assert service.popen is not None and service.popen.wait(timeout=60) == 1
        said = service.log()
    finally:
        node.run("chmod 0750 /var/lib/fognode-tls")
    assert "cannot read server certificate at /var/lib/fognode-tls/server.crt" in said, said
    assert "Permission denied" in said and "fognode runs as fognode" in said
    assert "cannot listen" not in said and "CAP_NET_BIND_SERVICE" not in said
