"""`fognode service`: run the node under systemd, on port 443, without root,
and renew its certificate as another user.

The SpeziLLMFog app ignores the port in the node's SRV record and always
connects to 443 (80 in development). Ports below 1024 need privileges; the
unit gives the service exactly one, ``CAP_NET_BIND_SERVICE``, as an ambient
capability of an unprivileged system user, so Python never runs as root.

Two users, so that the process that serves the LAN cannot sign anything
(ARCHITECTURE.md, Trust):

- ``fognode`` runs ``fognode.service``. It reads ``/var/lib/fognode-tls``
  (the server certificate and key, the root's certificate, its fog peer
  credentials) and owns ``/var/lib/fognode`` (node id, API keys, usage).
- ``fognode-certs`` runs ``fognode-certs.service`` from a daily timer:
  ``fognode certs renew`` with the node's issuing CA in
  ``/var/lib/fognode-certs`` (mode 0700, unreadable for ``fognode``),
  writing a new server key (group ``fognode``, 0640) and certificate that
  the server picks up without a restart. It has no network at all.

The fog's root CA key is never copied: it stays where ``setup.sh`` made it
(the operator's ``~/.local/share/fognode/ca``) or on another machine.
``install`` takes this node's issuing CA from the operator's data dir
(``issuer/``) or from a node bundle (``--bundle``), issues the first server
certificate, writes ``/etc/fognode/env`` (0600: a database URL with a
password goes there), the units, and enables them when systemd runs.
``--root`` writes the same tree under another directory (for images and
tests); ``unit`` only prints the serving unit.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ...certs.bundle import install_bundle, read_bundle
from ...certs.errors import CertError
from ...certs.issuer import SubjectNames, default_names, followed_names
from ...certs.lifecycle import RenewalPolicy, renew
from ...certs.store import CertPaths
from ..config.identity import id_host_name
from ..config.network import lan_addresses

UNIT_NAME = "fognode.service"
CERTS_UNIT = "fognode-certs.service"
TIMER_UNIT = "fognode-certs.timer"
STATE = "var/lib/fognode"
TLS = "var/lib/fognode-tls"
ISSUER = "var/lib/fognode-certs"

UNIT_FILE = Path("/etc/systemd/system") / UNIT_NAME

ENV_TEMPLATE = """\
# Settings for the fognode service, one FOGNODE_<NAME>=value per line (see
# docs/configuration.md). The unit sets the host, port, data dir and
# certificate directory (its Environment= line); a line here overrides it.
# This file is 0600: secrets (a database URL with its password, an upstream
# API key) may go here. `sudo fognode --node service COMMAND` runs a command
# with these settings too, so that it reaches this service.
#FOGNODE_FIREBASE_CREDENTIALS_FILE=/var/lib/fognode/service-account.json
#FOGNODE_UPSTREAM_URL=http://127.0.0.1:11434
#FOGNODE_LOG_FORMAT=json
"""

# What a network daemon that needs none of it can give up; systemd-analyze
# security scores the serving unit 1.x with these (4.2 before). Deliberately
# not here: PrivateUsers (a user namespace would void CAP_NET_BIND_SERVICE
# for the host's network), MemoryDenyWriteExecute (llama.cpp's server, a
# child of this unit, and libffi need writable-executable pages on some
# builds), IPAddressDeny (the node serves the LAN).
HARDENING = """\
NoNewPrivileges=true
ProtectSystem=strict
PrivateTmp=true
PrivateDevices=true
DevicePolicy=closed
PrivateMounts=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectClock=true
ProtectHostname=true
ProtectProc=invisible
RestrictNamespaces=true
RestrictRealtime=true
RestrictSUIDSGID=true
LockPersonality=true
RemoveIPC=true
KeyringMode=private
UMask=0077
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
"""


@dataclass(frozen=True)
class UnitOptions:
    executable: Path  # the fognode console script of the installed venv
    user: str = "fognode"
    certs_user: str = "fognode-certs"
    tls: bool = True
    port: int | None = None  # default: what the SpeziLLMFog app connects to
    shutdown_timeout: float = 30.0
    readable: tuple[Path, ...] = ()  # the venv and checkout, when under a home directory
    # The node's id, the same for the server and the renewal: the certificate
    # carries the name made from it (fognode-<id>.local), and the renewal
    # cannot read the server's state to find it.
    node_id: str | None = None

    @property
    def listen_port(self) -> int:
        return self.port if self.port is not None else (443 if self.tls else 80)

    def group(self) -> str:
        """The serving user's group: it may read what the renewal writes."""
        try:
            return grp.getgrgid(pwd.getpwnam(self.user).pw_gid).gr_name
        except KeyError:
            return self.user


def _homes(options: UnitOptions) -> str:
    """Home directories are hidden (an operator's CA lives there); the venv
    and the checkout it was installed from are put back, read-only."""
    if not options.readable:
        return "ProtectHome=true\n"
    paths = " ".join(str(p) for p in options.readable)
    return f"ProtectHome=tmpfs\nBindReadOnlyPaths={paths}\n"


def service_settings(options: UnitOptions) -> str:
    """The unit's Environment= assignments: where the service keeps its state
    and certificates, where it listens. Settings, not flags, so that the
    env file can change them and `fognode --node service` reads the same."""
    pairs = {
        "XDG_DATA_HOME": "/var/lib",
        "FOGNODE_CERTS_DIR": f"/{TLS}",
        "FOGNODE_HOST": "*",
        "FOGNODE_PORT": str(options.listen_port),
    }
    if not options.tls:
        pairs["FOGNODE_TLS"] = "false"
    if options.node_id:
        pairs["FOGNODE_NODE_ID"] = options.node_id
    return " ".join(f"{k}={v}" for k, v in pairs.items())


def render_unit(options: UnitOptions) -> str:
    return f"""\
# Installed by `fognode service install`; re-run it to update.
[Unit]
Description=fognode: a LAN fog node for LLM inference
After=network-online.target ollama.service
Wants=network-online.target fognode-certs.timer

[Service]
Type=exec
User={options.user}
Group={options.group()}
ExecStart={options.executable} serve
# State (node id, API keys, usage) in /var/lib/fognode; certificates (read
# only; fognode-certs.service renews them) in /var/lib/fognode-tls; every
# interface, port {options.listen_port}. /etc/fognode/env may override any of them.
Environment={service_settings(options)}
EnvironmentFile=-/etc/fognode/env
StateDirectory=fognode
StateDirectoryMode=0700
# The renewal's issuing CA: not even visible to this service.
InaccessiblePaths=-/{ISSUER}
{_homes(options)}# Port {options.listen_port} without root: this one capability, nothing else.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
{HARDENING}LimitNOFILE=65536
# SIGTERM: goodbye on mDNS, then open streams get shutdown_timeout to finish.
KillSignal=SIGTERM
TimeoutStopSec={int(options.shutdown_timeout) + 15}
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def render_certs_unit(options: UnitOptions) -> str:
    group = options.group()
    node = f" FOGNODE_NODE_ID={options.node_id}" if options.node_id else ""
    return f"""\
# Installed by `fognode service install`. Renews the server certificate with
# this node's issuing CA when it is due (30 days before the end of its 90);
# fognode.service reloads the new files by itself.
[Unit]
Description=fognode: renew the server certificate

[Service]
Type=oneshot
User={options.certs_user}
Group={group}
ExecStart={options.executable} certs renew --group {group}
Environment=FOGNODE_CERTS_DIR=/{TLS} FOGNODE_ISSUER_DIR=/{ISSUER}{node}
StateDirectory=fognode-certs
StateDirectoryMode=0700
ReadWritePaths=/{TLS}
{_homes(options)}# Signing needs no network: none at all (netlink only to list, in an empty
# network namespace, the addresses a first certificate would name).
PrivateNetwork=true
IPAddressDeny=any
RestrictAddressFamilies=AF_UNIX AF_NETLINK
CapabilityBoundingSet=
{HARDENING}"""


def render_timer() -> str:
    return """\
# Installed by `fognode service install`.
[Unit]
Description=fognode: look at the server certificate daily

[Timer]
OnBootSec=5min
OnCalendar=daily
RandomizedDelaySec=1h
Persistent=true

[Install]
WantedBy=timers.target
"""


def _invoking_data_dir() -> Path:
    """The data dir of whoever ran `sudo fognode service install` (setup.sh's files)."""
    base = os.environ.get("XDG_DATA_HOME")
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and not base:
        base = str(Path(pwd.getpwnam(sudo_user).pw_dir) / ".local" / "share")
    return Path(base or Path.home() / ".local" / "share") / "fognode"


def _ensure_user(name: str, home: Path, group: str | None = None) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        argv = ["useradd", "--system", "--home-dir", str(home), "--no-create-home"]
        argv += ["--shell", "/usr/sbin/nologin"]
        if group is not None:
            argv += ["--gid", group]
        subprocess.run([*argv, name], check=True)


def _chown_tree(path: Path, user: str, group: str | None = None) -> None:
    entry = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(Path(root) / name, entry.pw_uid, gid)
    os.chown(path, entry.pw_uid, gid)


def read_unit_environment(unit: Path) -> dict[str, str]:
    """What systemd gives the service: the unit's ``Environment=`` assignments,
    then its ``EnvironmentFile=`` files, whose lines override them (as in
    systemd). `fognode --node service` runs a command with these. Blocking."""
    found: dict[str, str] = {}
    files: list[tuple[Path, bool]] = []
    for line in unit.read_text(encoding="utf-8").splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        if key == "Environment":
            for assignment in shlex.split(value):
                name, _, setting = assignment.partition("=")
                found[name] = setting
        elif key == "EnvironmentFile":
            optional = value.startswith("-")
            files.append((Path(value.removeprefix("-")), optional))
    for path, optional in files:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if optional:
                continue
            raise
        for line in text.splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", ";")):
                continue
            name, sep, setting = stripped.partition("=")
            if sep:
                words = shlex.split(setting)
                found[name.strip()] = words[0] if len(words) == 1 else setting.strip()
    return found


def closed_to(user: str, path: Path) -> Path | None:
    """The first directory on the way to ``path`` that ``user`` cannot enter,
    or ``path`` itself if the user cannot read it; None when it can. (The
    unit binds home directories back for the service, but their permissions
    still apply: a venv under /root, mode 0700, cannot start.)"""
    entry = pwd.getpwnam(user)
    groups = {entry.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}

    def allowed(target: Path, bit: int) -> bool:
        st = target.stat()
        if entry.pw_uid == 0:
            return True
        if st.st_uid == entry.pw_uid:
            return bool(st.st_mode & (bit << 6))
        if st.st_gid in groups:
            return bool(st.st_mode & (bit << 3))
        return bool(st.st_mode & bit)

    for directory in reversed(path.parents):
        if not allowed(directory, 0o1):
            return directory
    return None if allowed(path, 0o4) else path


def _needed(executable: Path) -> tuple[Path, ...]:
    """What the service's user must reach to start: the command, the
    interpreter it runs (its first line), and fognode's own code."""
    from ... import gateway

    needed = [executable.absolute()]
    try:
        first = executable.read_bytes().split(b"\n", 1)[0]
    except OSError:
        first = b""
    if first.startswith(b"#!"):
        needed.append(Path(first[2:].decode(errors="replace").strip().split()[0]).resolve())
    needed.append(Path(gateway.__file__).resolve())
    return tuple(needed)


def _missing_user(args: argparse.Namespace, options: UnitOptions) -> str | None:
    """A user the service needs that does not exist and will not be made."""
    for user, flag in ((options.user, "--user"), (options.certs_user, "--certs-user")):
        try:
            pwd.getpwnam(user)
        except KeyError:
            if args.root != "/":  # only an install into / makes them
                return (
                    f"there is no user {user!r} on this machine. With --root, name users "
                    f"that exist ({flag} NAME), or install without --root, which creates them"
                )
    return None


def _unreachable(options: UnitOptions) -> str | None:
    """Why the service's user could not start the service, or None."""
    for path in _needed(options.executable):
        closed = closed_to(options.user, path)
        if closed is not None:
            return (
                f"the service's user {options.user!r} cannot reach {path}: it may not "
                f"{'enter' if closed != path else 'read'} {closed}. Let it (e.g. `chmod o+x "
                f"{closed}`), or install fognode where every user can read it (a checkout "
                "and venv under /opt, with ./setup.sh --no-test there)"
            )
    return None


def _readable(executable: Path) -> tuple[Path, ...]:
    """What the service must still read when homes are hidden: the venv, the
    interpreter it links to, the checkout an editable install points at."""
    from ... import gateway

    candidates = {
        executable.parent.parent,
        Path(sys.base_prefix).resolve(),
        Path(gateway.__file__).resolve().parents[1],
    }
    homes = (Path("/home"), Path("/root"))
    return tuple(sorted(p for p in candidates if any(p.is_relative_to(h) for h in homes)))


def _signing_material(args: argparse.Namespace, tls: CertPaths, issuer: CertPaths) -> str:
    """Put this node's issuing CA and peer credentials in place; say from where."""
    if args.bundle:
        install_bundle(read_bundle(Path(args.bundle)), tls, issuer)
        return f"the node bundle {args.bundle}"
    source = Path(args.from_data_dir) if args.from_data_dir else _invoking_data_dir()
    mine = CertPaths(source / "issuer")
    theirs = CertPaths(source / "certs")
    if mine.issuer_cert.exists():
        issuer.directory.mkdir(parents=True, exist_ok=True)
        for name in ("issuer.crt", "issuer.key", "ca.crt"):
            shutil.copy2(mine.directory / name, issuer.directory / name)
        for name in ("node.crt", "node.key", "ca.crt"):
            if (theirs.directory / name).exists():
                shutil.copy2(theirs.directory / name, tls.directory / name)
        return f"{mine.directory} (setup.sh's)"
    if theirs.ca_key.exists():
        # A CA made before issuing CAs: the renewal signs with the root itself,
        # which stays with the renewal's user, never the server's.
        issuer.directory.mkdir(parents=True, exist_ok=True)
        for name in ("ca.crt", "ca.key", "ca.passphrase"):
            if (theirs.directory / name).exists():
                shutil.copy2(theirs.directory / name, issuer.directory / name)
        shutil.copy2(theirs.ca_cert, tls.ca_cert)
        return f"{theirs.directory} (a CA made before issuing CAs; see `fognode certs check`)"
    raise CertError(
        f"no issuing CA in {mine.directory} and no --bundle: run ./setup.sh first, or make a "
        "node bundle on the machine that holds the fog's CA (`fognode certs issue --node NAME`)"
    )


def _service_node_id(state: Path) -> str:
    """The service's node id: its own from an earlier install, else the one
    setup.sh's node had (copied above: the same machine, the same node),
    else a new one, kept in its state."""
    path = state / "node-id"
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        return existing
    new = uuid.uuid4().hex[:16]
    path.write_text(new + "\n")
    return new


def install(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if os.geteuid() != 0:
        print(
            "fognode service install: needs root to create the users and the units; "
            "run it with sudo (the service itself runs unprivileged).",
            file=sys.stderr,
        )
        return 1
    executable = Path(args.executable).resolve()
    options = UnitOptions(
        executable=executable,
        user=args.user,
        certs_user=args.certs_user,
        tls=args.tls,
        port=args.port,
        readable=_readable(Path(args.executable).absolute()),
    )
    missing = _missing_user(args, options)
    if missing is not None:
        print(f"fognode service install: {missing}", file=sys.stderr)
        return 1
    state, tls_dir, issuer_dir = root / STATE, root / TLS, root / ISSUER
    if args.root == "/":
        _ensure_user(options.user, state)
        _ensure_user(options.certs_user, issuer_dir, group=options.group())
    problem = _unreachable(options)
    if problem is not None:
        if args.root == "/":
            print(f"fognode service install: {problem}", file=sys.stderr)
            return 1
        # Another machine's tree (an image): its permissions are not this one's.
        print(f"fognode service install: warning: {problem}", file=sys.stderr)
    group = options.group()
    for directory in (state, tls_dir, issuer_dir):
        directory.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    issuer_dir.chmod(0o700)
    tls_dir.chmod(0o750)
    source = Path(args.from_data_dir) if args.from_data_dir else _invoking_data_dir()
    for name in ("api-keys", "admin-api-key", "node-id"):
        have, want = source / name, state / name
        if have.exists() and not want.exists():
            shutil.copy2(have, want)
            print(f"copied {have} -> {want}")
    options = replace(options, node_id=_service_node_id(state))
    _chown_tree(state, options.user)
    if options.tls:
        tls, issuer = CertPaths(tls_dir), CertPaths(issuer_dir)
        try:
            used = _signing_material(args, tls, issuer)
            lan = [str(ip) for ip in lan_addresses()]
            named = [id_host_name(options.node_id)] if options.node_id else []
            policy = RenewalPolicy(
                names=None,
                defaults=SubjectNames.parse(default_names(lan, named)),
                follow=followed_names(lan, named),
                group=grp.getgrnam(group).gr_gid,
            )
            passphrase = None
            if issuer.ca_key.exists() and (issuer.directory / "ca.passphrase").exists():
                passphrase = (issuer.directory / "ca.passphrase").read_text().splitlines()[0]
            reason = renew(tls, issuer, passphrase.encode() if passphrase else None, policy)
        except CertError as exc:
            print(f"fognode service install: {exc}", file=sys.stderr)
            return 1
        print(f"issuing CA from {used} -> {issuer_dir} (readable by {options.certs_user} only)")
        if reason is not None:
            print(f"issued the server certificate in {tls_dir} ({reason})")
        _chown_tree(issuer_dir, options.certs_user, group)
        _chown_tree(tls_dir, options.certs_user, group)
        for own in (tls.node_key, tls.node_cert):
            if own.exists():  # the server's own peer credentials
                os.chown(own, pwd.getpwnam(options.user).pw_uid, grp.getgrnam(group).gr_gid)
        if tls.node_key.exists():
            tls.node_key.chmod(0o600)
    env = root / "etc/fognode/env"
    env.parent.mkdir(parents=True, exist_ok=True)
    if not env.exists():
        fd = os.open(env, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(ENV_TEMPLATE)
    env.chmod(0o600)  # also an env file an older install made 0644
    units = root / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for name, text in (
        (UNIT_NAME, render_unit(options)),
        (CERTS_UNIT, render_certs_unit(options)),
        (TIMER_UNIT, render_timer()),
    ):
        (units / name).write_text(text)
        (units / name).chmod(0o644)
        print(f"wrote {units / name}")
    aim = (
        "Your commands reach the service (its data in /var/lib/fognode, port "
        f"{options.listen_port}) with --node service, e.g.:\n"
        "  sudo fognode --node service usage\n"
        "  sudo fognode --node service apikey create NAME\n"
        "  sudo fognode --node service models list\n"
        "Its certificate is renewed by fognode-certs.service (daily): "
        f"sudo systemctl start {CERTS_UNIT} renews now when due."
    )
    if args.root != "/" or args.no_start or not Path("/run/systemd/system").is_dir():
        print(
            "Start it with:  systemctl daemon-reload && "
            f"systemctl enable --now {TIMER_UNIT} fognode\n"
            "Follow its log: journalctl -u fognode -f\n" + aim
        )
        return 0
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    subprocess.run(["systemctl", "enable", "--now", TIMER_UNIT, UNIT_NAME], check=True)
    print(f"fognode runs as {options.user} on port {options.listen_port}: journalctl -u fognode -f")
    print(aim)
    return 0


def print_unit(args: argparse.Namespace) -> int:
    options = UnitOptions(
        executable=Path(args.executable).resolve(),
        user=args.user,
        certs_user=args.certs_user,
        tls=args.tls,
        port=args.port,
        readable=_readable(Path(args.executable).absolute()),
    )
    if args.which == "certs":
        sys.stdout.write(render_certs_unit(options))
    elif args.which == "timer":
        sys.stdout.write(render_timer())
    else:
        sys.stdout.write(render_unit(options))
    return 0


def _this_fognode() -> str:
    beside = Path(sys.executable).parent / "fognode"
    return str(beside) if beside.is_file() else shutil.which("fognode") or "fognode"


def add_service_commands(sub: Any) -> None:
    service = sub.add_parser(
        "service",
        help="run fognode under systemd on port 443 without root",
        description="Install systemd units that run fognode as an unprivileged user with "
        "only CAP_NET_BIND_SERVICE, on the port SpeziLLMFog apps connect to, and renew its "
        "certificate as another user.",
    )
    actions = service.add_subparsers(dest="service_command", metavar="ACTION")
    actions.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--user", default="fognode", help="system user to serve as (fognode)")
        p.add_argument(
            "--certs-user",
            default="fognode-certs",
            help="system user that renews the certificate (fognode-certs)",
        )
        p.add_argument("--port", type=int, help="port (default 443; 80 with --no-tls)")
        p.add_argument("--no-tls", dest="tls", action="store_false", help="development mode")
        p.add_argument(
            "--executable",
            default=_this_fognode(),
            help="the fognode command the unit runs (default: the one beside this Python)",
        )

    inst = actions.add_parser("install", help="create the users, state and units; start them")
    common(inst)
    inst.add_argument(
        "--from-data-dir",
        help="take this node's issuing CA and the API keys from here (default: the invoking "
        "user's ~/.local/share/fognode, where setup.sh put them)",
    )
    inst.add_argument(
        "--bundle", help="a node bundle from `fognode certs issue --node` (another machine's CA)"
    )
    inst.add_argument("--no-start", action="store_true", help="write the files only")
    inst.add_argument("--root", default="/", help="install under this directory instead of /")
    inst.set_defaults(func=install)
    unit = actions.add_parser("unit", help="print a unit without installing it")
    common(unit)
    unit.add_argument(
        "which",
        nargs="?",
        choices=("serve", "certs", "timer"),
        default="serve",
        help="fognode.service (serve), fognode-certs.service (certs) or its timer",
    )
    unit.set_defaults(func=print_unit)
