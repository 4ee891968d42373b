"""deploy/docker-compose.yml starts as written: a simulation as close to Docker as this
machine allows (it has no Docker engine).

What an operator does: `./setup.sh` on the host (here: the same `fognode`
commands it runs, the files then owned by a host user, 0600), then `docker
compose up`. What Docker would do, done here from the compose file and the
Dockerfile themselves:

- each fognode service's entrypoint (deploy/entrypoint.sh, as the Dockerfile
  copies it) and command, started as root with only the compose file's
  `cap_add` (bounding set) and `no-new-privileges`;
- in a private mount namespace with the service's volumes where the compose
  file puts them (bind mounts from the operator's data dir, named volumes as
  directories with the owner and mode the Dockerfile gives the mount point,
  `tmpfs` entries as tmpfs), and the service's environment with the image's
  `ENV` under it;
- `network_mode: host` as a network namespace of the test's own (where 443
  may be bound), `network_mode: none` as no network at all; the `ollama`
  service as the Ollama stand-in on 127.0.0.1:11434 in that namespace;
- `depends_on: service_healthy` as waiting for the healthcheck's file.

Then the README's checks: /healthz, and a chat streamed with the README's
key, trusting only the exported CA.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.netns import unavailable_reason
from tests.support.processes import ROOT
from tests.support.sandbox import traversable

DEPLOY = ROOT / "deploy"
FOGNODE = [sys.executable, "-m", "fognode.gateway.cli"]
HOST_UID = 4242  # the operator on the host: neither root nor a container user
REASON = unavailable_reason()


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${NAME}` and `${NAME:-default}` (and `~` in a host path)."""

    def one(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", one, value)


def dockerfile() -> tuple[dict[str, str], dict[str, tuple[int, int, int]], str]:
    """The run stage's ENV, the directories it makes (owner, group, mode), and
    where the entrypoint comes from."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    run_stage = text[text.rindex("\nFROM ") :]
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", run_stage, re.M):
        env.update(dict(pair.split("=", 1) for pair in shlex.split(line)))
    dirs = {
        path: (int(uid), int(gid), int(mode, 8))
        for uid, gid, mode, path in re.findall(
            r"install -d -o (\d+) -g (\d+) -m (\d+) (\S+)", run_stage
        )
    }
    copied = re.search(r"^COPY (deploy/\S+) (\S+)$", run_stage, re.M)
    entry = re.search(r'^ENTRYPOINT \["(\S+)"\]$', run_stage, re.M)
    assert copied and entry and Path(copied.group(2)).name == entry.group(1)
    return env, dirs, copied.group(1)


def operators_data_dir(directory: Path) -> Path:
    """What ./setup.sh leaves in ~/.local/share/fognode, by the same commands."""
    data = directory / "fognode"
    env = {**os.environ, "XDG_DATA_HOME": str(directory), "FOGNODE_CA_PASSPHRASE": "x" * 24}
    for argv in (
        ["certs", "init"],
        ["certs", "issue", "--node", "homelab", "--install"],
        ["certs", "export", "--out", str(data / "certs" / "export")],
    ):
        out = subprocess.run([*FOGNODE, *argv], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    created = subprocess.run(
        [*FOGNODE, "apikey", "create", "local-admin", "--admin", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    made = json.loads(created.stdout)
    for name, text in (("api-keys", made["entry"] + "\n"), ("admin-api-key", made["key"] + "\n")):
        (data / name).write_text(text)
    for path in (data, *data.rglob("*")):
        os.chown(path, HOST_UID, HOST_UID)
        if path.is_file():
            path.chmod(0o600 if path.suffix in ("", ".key", ".passphrase") else 0o644)
    return data


class Simulation:
    def __init__(self, directory: Path, netns: str, host_env: dict[str, str]) -> None:
        self.directory = directory
        self.netns = netns
        self.host_env = host_env
        self.compose: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
        self.image_env, self.image_dirs, self.entrypoint = dockerfile()
        self.volumes: dict[str, Path] = {}
        self.processes: list[subprocess.Popen[bytes]] = []

    def volume(self, name: str, target: str) -> Path:
        """A named volume: created once, owned as the image's mount point is."""
        if name not in self.volumes:
            path = self.directory / "volumes" / name
            path.mkdir(parents=True)
            uid, gid, mode = self.image_dirs.get(target, (0, 0, 0o755))
            os.chown(path, uid, gid)
            path.chmod(mode)
            self.volumes[name] = path
        return self.volumes[name]

    def mounts(self, service: dict[str, Any]) -> str:
        script = "mount -t tmpfs -o mode=0755 tmpfs /var/lib && mount -t tmpfs tmpfs /run && "
        for spec in service.get("volumes", []):
            source, target, *flags = interpolate(spec, self.host_env).split(":")
            if source.startswith(("~", "/", ".")):
                host = Path(os.path.expanduser(source))
                assert host.exists(), f"{spec}: {host} does not exist (compose would fail)"
            else:
                host = self.volume(source, target)
            make = "mkdir -p" if host.is_dir() else "mkdir -p $(dirname {t}) && touch"
            script += f"{make.format(t=target)} {target} && mount --bind {host} {target} && "
            if "ro" in flags:
                script += f"mount -o remount,bind,ro {target} && "
        for target in service.get("tmpfs", []):
            script += f"mkdir -p {target} && mount -t tmpfs tmpfs {target} && "
        return script

    def start(self, name: str) -> subprocess.Popen[bytes]:
        service = self.compose["services"][name]
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
            **self.image_env,
            **{k: interpolate(str(v), self.host_env) for k, v in service["environment"].items()},
        }
        caps = ",".join("+" + c.lower() for c in service["cap_add"])
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        command = service.get("command", ["serve"])
        variables = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        script = (
            traversable(self.directory)
            + self.mounts(service)
            + f"exec env -i {variables} setpriv --no-new-privs --inh-caps=-all "
            + f"--bounding-set=-all,{caps} -- {ROOT / self.entrypoint} "
            + " ".join(shlex.quote(c) for c in command)
        )
        inner = ["unshare", "--mount"]
        if service.get("network_mode") == "none":
            inner.append("--net")
        else:
            assert service.get("network_mode") == "host"
        log = (self.directory / f"{name}.log").open("wb")
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *inner, "sh", "-c", script],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def healthy(self, name: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
        """`depends_on: condition: service_healthy`, for a `test -s FILE` check."""
        test = self.compose["services"][name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "test", "-s"]
        target = Path(test[3])
        volume = next(
            self.volumes[v.split(":")[0]]
            for v in self.compose["services"][name]["volumes"]
            if v.split(":")[1] == str(target.parent)
        )
        deadline = time.monotonic() + timeout
        while not (volume / target.name).exists() or not (volume / target.name).stat().st_size:
            assert time.monotonic() < deadline and process.poll() is None, self.log(name)
            time.sleep(0.2)

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def namespace() -> Iterator[tuple[str, Path]]:
    if REASON is not None:
        pytest.skip(REASON)
    netns = f"fncmp{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    directory = Path(tempfile.mkdtemp(prefix="fognode-compose-"))
    directory.chmod(0o755)
    try:
        yield netns, directory
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.slow
def test_the_compose_file_starts_a_node_that_streams_a_chat(
    namespace: tuple[str, Path],
) -> None:
    netns, directory = namespace
    home = directory / "home"
    home.mkdir()
    data = operators_data_dir(home)
    sim = Simulation(directory, netns, {"FOGNODE_HOME": str(data)})
    ollama = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.support.ollama_standin"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sim.processes.append(ollama)
    try:
        sim.healthy("fognode-certs", sim.start("fognode-certs"))
        gateway = sim.start("fognode")
        ca = data / "certs" / "export" / "fognode-ca.crt"  # the README's trust step
        key = (data / "admin-api-key").read_text().strip()
        https = ["--cacert", str(ca), "--resolve", "spezillmfog.local:443:127.0.0.1"]

        def curl(*args: str) -> str:
            out = subprocess.run(
                ["ip", "netns", "exec", netns, "curl", "-sS", "--max-time", "20", *https, *args],
                capture_output=True,
                text=True,
            )
            return out.stdout + out.stderr

        deadline = time.monotonic() + 60
        health = ""
        while time.monotonic() < deadline and gateway.poll() is None:
            health = curl("https://spezillmfog.local/healthz")
            if '"status": "ok"' in health:
                break
            time.sleep(0.3)
        assert '"status": "ok"' in health, sim.log("fognode")
        chat = curl(
            "-N",
            "https://spezillmfog.local/v1/chat/completions",
            "-H",
            f"Authorization: Bearer {key}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(
                {
                    "model": "llama3.2:1b",
                    "stream": True,
                    "messages": [{"role": "user", "content": "Why is the sky blue?"}],
                }
            ),
        )
        events = [e.removeprefix("data: ") for e in chat.split("\n\n") if e.startswith("data: ")]
        assert events and events[-1] == "[DONE]", chat
        text = "".join(
            json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
        )
        assert "sky is blue" in text
        status = curl(
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "https://spezillmfog.local/v1/models",
            "-H",
            "Authorization: Bearer not-the-key",
        )
        assert status == "401"
        # Who runs what: the gateway as 10001, and it never got a CA key.
        tls = sim.volumes["fognode-tls"]
        assert sorted(p.name for p in tls.iterdir()) == ["ca.crt", "server.crt", "server.key"]
        assert (tls / "server.key").stat().st_uid == 10002
        assert (tls / "server.key").stat().st_gid == 10001
        assert (tls / "server.key").stat().st_mode & 0o777 == 0o640
        assert not any(p.suffix == ".key" for p in sim.volumes["fognode-data"].rglob("*"))
        assert gateway.poll() is None
        assert '"level": "ERROR"' not in sim.log("fognode")
    finally:
        sim.stop()
    for name in ("fognode", "fognode-certs"):
        assert "Traceback" not in sim.log(name), sim.log(name)
