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
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fognode.certs.store import CertPaths, load_certs
from tests.support.netns import unavailable_reason
from tests.support.pki import PASSPHRASE, Pki, make_pki
from tests.support.processes import ROOT, Process
from tests.support.sandbox import traversable

FOGNODE = [sys.executable, "-m", "fognode.gateway.cli"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


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
    assert " serve\n" in unit
    assert "FOGNODE_HOST=* FOGNODE_PORT=443\n" in unit
    assert "InaccessiblePaths=-/var/lib/fognode-certs\n" in unit
    assert "FOGNODE_PORT=80 FOGNODE_TLS=false\n" in run("service", "unit", "--no-tls").stdout
    certs = run("service", "unit", "certs").stdout
    assert "User=fognode-certs\n" in certs and "PrivateNetwork=true\n" in certs
    assert "certs renew --group" in certs and "CapabilityBoundingSet=\n" in certs
    timer = run("service", "unit", "timer").stdout
    assert "OnCalendar=daily\n" in timer and "Persistent=true\n" in timer
    for name, text in (
        ("fognode.service", unit),
        ("fognode-certs.service", certs),
        ("fognode-certs.timer", timer),
    ):
        (tmp_path / name).write_text(text)
    verify = subprocess.run(
        ["systemd-analyze", "verify", *(str(p) for p in sorted(tmp_path.iterdir()))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    for name, most in (("fognode.service", 2.0), ("fognode-certs.service", 1.0)):
        score = exposure(tmp_path / name)
        assert score <= most, f"{name}: systemd-analyze security says {score} (4.2 before)"


def exposure(unit: Path) -> float:
    """`systemd-analyze security --offline=true`'s overall exposure level."""
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert found, out.stdout + out.stderr
    return float(found.group(1))


def setup_sh_data_dir(directory: Path) -> Pki:
    """What ./setup.sh leaves for the operator: ca/, issuer/, certs/, the API keys."""
    pki = make_pki(directory / "certs")
    for part, made in (("ca", pki.root), ("issuer", pki.issuer)):
        made.directory.rename(directory / part)
    (directory / "ca" / "ca.passphrase").write_bytes(PASSPHRASE + b"\n")
    (directory / "api-keys").write_text("admin:admin:" + "0" * 64 + "\n")
    return Pki(
        CertPaths(directory / "certs"), CertPaths(directory / "ca"), CertPaths(directory / "issuer")
    )


def install_tree(root: Path, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = ["service", "install", "--root", str(root), "--user", "nobody"]
    argv += ["--certs-user", "daemon", "--from-data-dir", str(data), *extra]
    return run(*argv)


def test_install_keeps_every_ca_key_from_the_serving_user(tmp_path: Path) -> None:
    data = tmp_path / "data"
    setup_sh_data_dir(data)
    root = tmp_path / "root"
    out = install_tree(root, data)
    assert out.returncode == 0, out.stderr
    state, tls, issuer = (root / "var/lib" / n for n in ("fognode", "fognode-tls", "fognode-certs"))
    everything = {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
    assert not any(p.name in ("ca.key", "ca.passphrase") for p in everything), everything
    assert sorted(p.name for p in state.iterdir()) == ["api-keys", "node-id"]
    assert sorted(p.name for p in tls.iterdir()) == [
        "ca.crt",
        "node.crt",
        "node.key",
        "server.crt",
        "server.key",
    ]
    assert sorted(p.name for p in issuer.iterdir()) == ["ca.crt", "issuer.crt", "issuer.key"]
    nobody, daemon = pwd.getpwnam("nobody"), pwd.getpwnam("daemon")
    assert (state.stat().st_uid, mode(state)) == (nobody.pw_uid, 0o700)
    assert (issuer.stat().st_uid, mode(issuer)) == (daemon.pw_uid, 0o700)
    assert (mode(issuer / "issuer.key"), (issuer / "issuer.key").stat().st_uid) == (
        0o600,
        daemon.pw_uid,
    )
    assert (tls.stat().st_uid, tls.stat().st_gid, mode(tls)) == (
        daemon.pw_uid,
        nobody.pw_gid,
        0o750,
    )
    key = tls / "server.key"
    assert (mode(key), key.stat().st_uid, key.stat().st_gid) == (
        0o640,
        daemon.pw_uid,
        nobody.pw_gid,
    )
    assert (tls / "node.key").stat().st_uid == nobody.pw_uid and mode(tls / "node.key") == 0o600
    served = load_certs(tls / "server.crt", "server")
    assert len(served) == 2 and served[1] == load_certs(issuer / "issuer.crt", "issuer")[0]
    env = root / "etc/fognode/env"
    assert env.read_text().startswith("# Settings for the fognode service") and mode(env) == 0o600
    units = root / "etc/systemd/system"
    assert "User=nobody\n" in (units / "fognode.service").read_text()
    assert "User=daemon\n" in (units / "fognode-certs.service").read_text()
    assert (units / "fognode-certs.timer").exists()
    assert "systemctl enable --now fognode-certs.timer fognode" in out.stdout

    # Again: the operator's own edits and state are kept; an old 0644 env file is closed.
    env.write_text("FOGNODE_LOG_FORMAT=json\n")
    env.chmod(0o644)
    assert install_tree(root, data).returncode == 0
    assert env.read_text() == "FOGNODE_LOG_FORMAT=json\n" and mode(env) == 0o600


def test_install_from_an_old_layout_gives_the_root_to_the_renewal_only(tmp_path: Path) -> None:
    """A CA made before issuing CAs (ca.key beside server.key): the renewal
    user gets it, the serving user does not."""
    data = tmp_path / "data"
    pki = setup_sh_data_dir(data)
    shutil.rmtree(data / "issuer")
    for name in ("ca.key", "ca.passphrase"):
        (data / "ca" / name).rename(pki.paths.directory / name)
    root = tmp_path / "root"
    out = install_tree(root, data)
    assert out.returncode == 0, out.stderr
    assert "made before issuing CAs" in out.stdout
    assert sorted(p.name for p in (root / "var/lib/fognode-certs").iterdir()) == [
        "ca.crt",
        "ca.key",
        "ca.passphrase",
    ]
    assert not (root / "var/lib/fognode-tls/ca.key").exists()
    assert not (root / "var/lib/fognode/certs").exists()


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


def sandboxed(
    netns: str,
    directory: Path,
    argv: list[str],
    env: dict[str, str],
    *,
    user: str = "nobody",
    group: str = "nogroup",
    capability: bool = True,
    hidden: tuple[Path, ...] = (),
    network: bool = True,
) -> list[str]:
    """``argv`` as the unit runs it, as far as this machine allows: as
    ``user``, with CAP_NET_BIND_SERVICE as its only (ambient) capability and
    bounding set, no new privileges, umask 077, ``hidden`` paths made
    inaccessible, and without a network when the unit has none.

    The venv is made reachable for the user (tests/sandbox.py).
    """
    mounts = traversable(directory)
    for path in hidden:  # InaccessiblePaths=
        mounts += f"mount -t tmpfs -o mode=000 none {path} && "
    caps = "--inh-caps=-all --bounding-set=-all "
    if capability:
        caps = (
            "--inh-caps=-all,+net_bind_service --ambient-caps=-all,+net_bind_service "
            "--bounding-set=-all,+net_bind_service "
        )
    variables = " ".join(f"{k}={v}" for k, v in env.items())
    command = (
        f"{mounts}umask 077 && exec setpriv --reuid={user} --regid={group} --clear-groups "
        f"--no-new-privs {caps}-- env {variables} {' '.join(argv)}"
    )
    inner = ["unshare", "--mount"] + ([] if network else ["--net"]) + ["sh", "-c", command]
    return ["ip", "netns", "exec", netns, *inner]


def as_nobody(netns: str, directory: Path, capability: bool) -> list[str]:
    """fognode as user nobody on port 443, with or without the capability."""
    data = directory / "data"
    env = {"HOME": str(data), "XDG_DATA_HOME": str(data), "FOGNODE_MDNS": "false"}
    argv = [sys.executable, "-m", "fognode.gateway.cli", "serve", "--no-tls", "--auth", "none"]
    return sandboxed(netns, directory, [*argv, "--port", "443"], env, capability=capability)


def curl(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "curl", "-s", "--max-time", "5", *args],
        capture_output=True,
        text=True,
    )


def test_the_installed_service_serves_443_renews_and_never_reads_a_ca_key(
    sandbox: tuple[str, Path], tmp_path: Path
) -> None:
    """The installed tree, run as the units run it: the server as nobody on
    443 with TLS; the renewal as another user, without a network; the server
    reloads the renewed certificate; nobody cannot read the issuing CA's key."""
    netns, directory = sandbox
    data = tmp_path / "data"
    setup_sh_data_dir(data)
    root = directory / "root"
    assert install_tree(root, data).returncode == 0
    lib = root / "var/lib"
    tls, issuer = lib / "fognode-tls", lib / "fognode-certs"
    serve_env = {
        "XDG_DATA_HOME": str(lib),
        "FOGNODE_CERTS_DIR": str(tls),
        "FOGNODE_MDNS": "false",
        "FOGNODE_ONBOARDING": "false",
        "FOGNODE_AUTH": "none",
        "FOGNODE_ALLOW_NO_AUTH_ON_LAN": "true",
        "FOGNODE_CERT_CHECK_INTERVAL": "0.5",
        "FOGNODE_WORKERS": "1",
    }
    fognode = [sys.executable, "-m", "fognode.gateway.cli"]
    node = Process(
        sandboxed(
            netns,
            directory,
            [*fognode, "serve", "--host", "'*'", "--port", "443"],
            serve_env,
            hidden=(issuer,),
        ),
        log_file=directory / "node.log",
    )
    https = ["--cacert", str(tls / "ca.crt"), "--resolve", "spezillmfog.local:443:127.0.0.1"]
    url = "https://spezillmfog.local/healthz"

    def serial() -> str:
        out = subprocess.run(
            ["ip", "netns", "exec", netns, "openssl", "s_client", "-connect", "127.0.0.1:443"],
            input="",
            capture_output=True,
            text=True,
            timeout=20,
        )
        pem = re.search(
            r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", out.stdout, re.S
        )
        assert pem, out.stdout + out.stderr
        return load_certs_text(pem.group(0))

    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and node.alive:
            if '"status": "ok"' in curl(netns, *https, url).stdout:
                break
            time.sleep(0.2)
        assert '"status": "ok"' in curl(netns, *https, url).stdout
        first = serial()

        # The serving user cannot read the issuing CA's key, even without the
        # unit's InaccessiblePaths; it can read its own server key.
        peek = [*fognode, "certs", "renew", "--force"]
        as_server = subprocess.run(
            sandboxed(
                netns,
                directory,
                peek,
                {**serve_env, "FOGNODE_ISSUER_DIR": str(issuer)},
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert as_server.returncode == 1
        assert "Permission denied" in as_server.stderr, as_server.stderr
        assert str(issuer) in as_server.stderr and "Traceback" not in as_server.stderr
        reading = subprocess.run(
            sandboxed(netns, directory, ["cat", str(issuer / "issuer.key")], {}, capability=False),
            capture_output=True,
            text=True,
        )
        assert reading.returncode != 0 and "Permission denied" in reading.stderr
        assert "PRIVATE KEY" not in reading.stdout

        # The renewal unit: its user, the server's group, no network at all.
        renewal = subprocess.run(
            sandboxed(
                netns,
                directory,
                [*fognode, "certs", "renew", "--force", "--group", "nogroup"],
                {
                    # The unit sets no data dir: the user's home, where fognode keeps nothing.
                    "XDG_DATA_HOME": str(directory / "renewal-home"),
                    "FOGNODE_CERTS_DIR": str(tls),
                    "FOGNODE_ISSUER_DIR": str(issuer),
                },
                user="daemon",
                capability=False,
                network=False,
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert renewal.returncode == 0 and "Renewed" in renewal.stdout, renewal.stderr
        key = tls / "server.key"
        assert (mode(key), key.stat().st_gid) == (0o640, pwd.getpwnam("nobody").pw_gid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and serial() == first:
            time.sleep(0.3)
        assert serial() != first  # reloaded without a restart
        assert node.alive
    finally:
        code = node.stop(limit=30)
    assert code == 0, node.log()
    assert "reloaded the server certificate" in node.log()


def load_certs_text(pem: str) -> str:
    from cryptography import x509

    return format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x")


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
