"""`fognode service`: run the node under systemd, on port 443, without root.

The SpeziLLMFog app ignores the port in the node's SRV record and always
connects to 443 (80 in development). Ports below 1024 need privileges; the
unit gives the service exactly one, ``CAP_NET_BIND_SERVICE``, as an ambient
capability of an unprivileged system user, so Python never runs as root.

``install`` creates that user, a state directory (``/var/lib/fognode``) with
a copy of the certificates and API keys ``setup.sh`` made for the operator
(unless it has its own already), an environment file for settings
(``/etc/fognode/env``), and the unit; then enables and starts it when
systemd runs. ``--root`` writes the same tree under another directory (for
images and tests), ``unit`` only prints the unit.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNIT_NAME = "fognode.service"

ENV_TEMPLATE = """\
# Settings for the fognode service, one FOGNODE_<NAME>=value per line (see
# docs/configuration.md). The unit already sets the host, port and data dir.
#FOGNODE_FIREBASE_CREDENTIALS_FILE=/var/lib/fognode/service-account.json
#FOGNODE_UPSTREAM_URL=http://127.0.0.1:11434
#FOGNODE_LOG_FORMAT=json
"""


@dataclass(frozen=True)
class UnitOptions:
    executable: Path  # the fognode console script of the installed venv
    user: str = "fognode"
    tls: bool = True
    port: int | None = None  # default: what the SpeziLLMFog app connects to
    shutdown_timeout: float = 30.0

    @property
    def listen_port(self) -> int:
        return self.port if self.port is not None else (443 if self.tls else 80)


def render_unit(options: UnitOptions) -> str:
    flags = f"--host * --port {options.listen_port}" + ("" if options.tls else " --no-tls")
    return f"""\
# Installed by `fognode service install`; re-run it to update.
[Unit]
Description=fognode: a LAN fog node for LLM inference
After=network-online.target ollama.service
Wants=network-online.target

[Service]
Type=exec
User={options.user}
ExecStart={options.executable} serve {flags}
EnvironmentFile=-/etc/fognode/env
# State (node id, certificates, API keys) in /var/lib/fognode.
Environment=XDG_DATA_HOME=/var/lib
StateDirectory=fognode
StateDirectoryMode=0700
# Port {options.listen_port} without root: this one capability, nothing else.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=true
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=true
PrivateDevices=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectControlGroups=true
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=true
LockPersonality=true
LimitNOFILE=65536
# SIGTERM: goodbye on mDNS, then open streams get shutdown_timeout to finish.
KillSignal=SIGTERM
TimeoutStopSec={int(options.shutdown_timeout) + 15}
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def _invoking_data_dir() -> Path:
    """The data dir of whoever ran `sudo fognode service install` (setup.sh's files)."""
    base = os.environ.get("XDG_DATA_HOME")
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and not base:
        base = str(Path(pwd.getpwnam(sudo_user).pw_dir) / ".local" / "share")
    return Path(base or Path.home() / ".local" / "share") / "fognode"


def _ensure_user(name: str, home: Path) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--home-dir",
                str(home),
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
        )


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(Path(root) / name, entry.pw_uid, entry.pw_gid)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def install(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if os.geteuid() != 0:
        print(
            "fognode service install: needs root to create the user and the unit; "
            "run it with sudo (the service itself runs unprivileged).",
            file=sys.stderr,
        )
        return 1
    options = UnitOptions(
        executable=Path(args.executable).resolve(), user=args.user, tls=args.tls, port=args.port
    )
    state = root / "var/lib/fognode"
    if args.root == "/":
        _ensure_user(options.user, state)
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    source = Path(args.from_data_dir) if args.from_data_dir else _invoking_data_dir()
    for name in ("certs", "api-keys", "admin-api-key"):
        have, want = source / name, state / name
        if have.exists() and not want.exists():
            if have.is_dir():
                shutil.copytree(have, want)
            else:
                shutil.copy2(have, want)
            print(f"copied {have} -> {want}")
    _chown_tree(state, options.user)
    env = root / "etc/fognode/env"
    env.parent.mkdir(parents=True, exist_ok=True)
    if not env.exists():
        env.write_text(ENV_TEMPLATE)
    unit = root / "etc/systemd/system" / UNIT_NAME
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(render_unit(options))
    unit.chmod(0o644)
    print(f"wrote {unit}")
    if args.root != "/" or args.no_start or not Path("/run/systemd/system").is_dir():
        print(
            "Start it with:  systemctl daemon-reload && systemctl enable --now fognode\n"
            "Follow its log: journalctl -u fognode -f"
        )
        return 0
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    subprocess.run(["systemctl", "enable", "--now", UNIT_NAME], check=True)
    print(f"fognode runs as {options.user} on port {options.listen_port}: journalctl -u fognode -f")
    return 0


def print_unit(args: argparse.Namespace) -> int:
    options = UnitOptions(
        executable=Path(args.executable).resolve(), user=args.user, tls=args.tls, port=args.port
    )
    sys.stdout.write(render_unit(options))
    return 0


def _this_fognode() -> str:
    beside = Path(sys.executable).parent / "fognode"
    return str(beside) if beside.is_file() else shutil.which("fognode") or "fognode"


def add_service_commands(sub: Any) -> None:
    service = sub.add_parser(
        "service",
        help="run fognode under systemd on port 443 without root",
        description="Install a systemd unit that runs fognode as an unprivileged user with "
        "only CAP_NET_BIND_SERVICE, on the port SpeziLLMFog apps connect to.",
    )
    actions = service.add_subparsers(dest="service_command", metavar="ACTION")
    actions.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--user", default="fognode", help="system user to run as (fognode)")
        p.add_argument("--port", type=int, help="port (default 443; 80 with --no-tls)")
        p.add_argument("--no-tls", dest="tls", action="store_false", help="development mode")
        p.add_argument(
            "--executable",
            default=_this_fognode(),
            help="the fognode command the unit runs (default: the one beside this Python)",
        )

    inst = actions.add_parser("install", help="create the user, state dir and unit; start it")
    common(inst)
    inst.add_argument(
        "--from-data-dir",
        help="copy certs/ and api-keys from here (default: the invoking user's "
        "~/.local/share/fognode, where setup.sh put them)",
    )
    inst.add_argument("--no-start", action="store_true", help="write the files only")
    inst.add_argument("--root", default="/", help="install under this directory instead of /")
    inst.set_defaults(func=install)
    unit = actions.add_parser("unit", help="print the unit without installing it")
    common(unit)
    unit.set_defaults(func=print_unit)
