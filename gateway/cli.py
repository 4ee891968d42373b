"""The ``fognode`` command.

Subcommands are added by the parts that own them; this module only parses
arguments, loads settings and starts things.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..auth.cli import add_auth_commands, run_auth_command
from ..certs.authority import load_ca
from ..certs.cli import add_certs_commands, run_certs_command
from ..certs.export import export_forms
from ..certs.inspect import file_fingerprint
from ..certs.store import CertPaths
from ..discovery.chat import LocalNode
from ..discovery.cli import add_discovery_commands, run_discovery_command
from ..models.cli import ModelsDefaults, add_models_commands, run_models_command
from ..usage.cli import add_usage_commands, run_usage_command
from ..web.onboarding import terminal_text
from . import __version__
from .auth_setup import project_id
from .config.network import local_url
from .config.paths import admin_key_file, data_dir
from .config.running import read_running
from .config.settings import Settings, load_settings
from .node.operate import add_operate_commands, fog_checker, run_drain, run_fog
from .node.serve import run_loop, serve, startup_failure
from .node.service import CERTS_UNIT, UNIT_FILE, add_service_commands, read_unit_environment
from .node.supervisor import worker_count
from .options import certs_defaults, quota_options
from .pages.onboarding import onboarding_links
from .telemetry.logs import configure_logging


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML config file (default: $FOGNODE_CONFIG). Flags beat env vars beat the file.",
    )
    parser.add_argument("--host", help="address to bind (FOGNODE_HOST, default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=int,
        help="port to listen on (FOGNODE_PORT; default 8443 with TLS, 8080 without; "
        "SpeziLLMFog apps connect to 443, or 80 without TLS)",
    )
    parser.add_argument(
        "--upstream-url",
        help="Ollama base URL (FOGNODE_UPSTREAM_URL, default http://127.0.0.1:11434)",
    )
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls", dest="tls", action="store_true", default=None, help="serve HTTPS (default)"
    )
    tls.add_argument(
        "--no-tls",
        dest="tls",
        action="store_false",
        help="serve plain HTTP (development only; FOGNODE_TLS=false)",
    )
    parser.add_argument(
        "--auth",
        choices=["firebase", "none"],
        help="firebase (default): tokens or API keys required; none: development only",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes serving requests on the one port (FOGNODE_WORKERS; default 0: one "
        "per core; 1: a single process; docs/workers.md)",
    )
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", choices=["text", "json"])


def _settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        host=args.host,
        port=args.port,
        upstream_url=args.upstream_url,
        tls=args.tls,
        auth=args.auth,
        workers=args.workers,
        log_level=args.log_level,
        log_format=args.log_format,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings_from(args)

    workers = worker_count(settings)
    # With worker processes every line says which process wrote it.
    configure_logging(
        settings.log_level,
        settings.log_format,
        settings.access_log,
        process="main" if workers > 1 else "",
    )
    try:
        run_loop(serve(settings), settings.event_loop)
    except Exception as exc:
        message = startup_failure(exc, settings)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1
    return 0


def _local_url(settings: Settings) -> str:
    """The gateway on this machine, as the settings say it listens."""
    return local_url(settings.host, settings.bind_port, tls=settings.tls)


def _cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 if the local gateway answers /healthz (for Docker and systemd)."""
    import ssl
    import urllib.request

    settings = _settings_from(args)
    # Our own process on loopback: the certificate is not what is checked here.
    context = ssl._create_unverified_context() if settings.tls else None
    try:
        with urllib.request.urlopen(
            f"{_local_url(settings)}/healthz", timeout=args.timeout, context=context
        ) as resp:
            ok = resp.status == 200
    except OSError as exc:
        print(f"fognode healthcheck: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


_SECRET_FIELDS = {"upstream_api_key", "ca_passphrase", "usage_database_url", "tls_ticket_secret"}


def _cmd_config(args: argparse.Namespace) -> int:
    settings = _settings_from(args)
    data = settings.model_dump(mode="json")
    for name in _SECRET_FIELDS:
        if data.get(name):
            data[name] = "***"
    from .upstreams.upstream import without_password

    data["upstream_url"] = without_password(data["upstream_url"])
    data["upstream_urls"] = [without_password(url) for url in data["upstream_urls"]]
    print(json.dumps(data, indent=2))
    return 0


def _cmd_certs_qr(args: argparse.Namespace) -> int:
    """The onboarding page's QR code in the terminal: the link of the page the
    running node serves (it wrote where, running.json), or, with no node
    running, the link these settings would give, with a warning that it is
    not the running page's."""
    settings = load_settings(None)
    ca = load_ca(CertPaths(Path(args.dir).expanduser()), None, need_key=False).cert
    running = read_running()
    if args.url is not None or args.port is not None:
        link = onboarding_links(settings, port=args.port, url=args.url)[0]
    elif running is not None and running.onboarding is not None:
        link = running.onboarding
    elif running is not None:
        print(
            "fognode certs qr: the running node serves no onboarding page (its log at start "
            "says why; FOGNODE_ONBOARDING, FOGNODE_ONBOARDING_PORT). This is the link it "
            "would have, with these settings:",
            file=sys.stderr,
        )
        link = onboarding_links(settings)[0]
    else:
        link = onboarding_links(settings)[0]
        print(
            f"fognode certs qr: no node is running from {data_dir()}: this is the link of the "
            "page these settings would serve (a node started with other flags, `serve --host "
            "'*'` say, serves another). Start the node first, or give --url.",
            file=sys.stderr,
        )
        if not settings.onboarding_enabled:
            print(
                "fognode certs qr: and these settings serve no onboarding page "
                "(FOGNODE_ONBOARDING=true turns it on).",
                file=sys.stderr,
            )
    print(terminal_text(link, export_forms(ca)), end="")
    return 0


def _add_certs_qr(certs_sub: Any) -> None:
    qr = certs_sub.add_parser(
        "qr",
        help="print the phone onboarding QR code, link and CA fingerprint",
        description="Print the QR code of the phone onboarding page's link, with the "
        "CA's SHA-256 fingerprint to compare on the phone.",
    )
    qr.add_argument("--dir", default=None, help="certificate directory (FOGNODE_CERTS_DIR)")
    qr.add_argument(
        "--port",
        type=int,
        default=None,
        help="port of the onboarding page (default FOGNODE_ONBOARDING_PORT, 80)",
    )
    qr.add_argument(
        "--url",
        help="base URL phones use for the onboarding page, if not this machine's LAN "
        "address (a DNS name, a port forwarded by a router; default FOGNODE_ONBOARDING_URL)",
    )
    qr.set_defaults(func=_cmd_certs_qr)


def _local_node() -> LocalNode | None:
    """The node serving from this data dir, as it says itself."""
    running = read_running()
    return LocalNode(running.url, running.loopback_only) if running is not None else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fognode",
        description="A LAN fog node for LLM inference: a TLS, auth and mDNS front for Ollama.",
    )
    parser.add_argument("--version", action="version", version=f"fognode {__version__}")
    parser.add_argument(
        "--node",
        choices=["service"],
        help="service: run the command against the fognode service installed on this machine "
        "(`fognode service install`): its data dir, certificates and port, as its unit and "
        "/etc/fognode/env set them. Usually with sudo: sudo fognode --node service usage",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway in front of Ollama until SIGINT/SIGTERM.",
    )
    _add_settings_flags(serve)
    serve.set_defaults(func=_cmd_serve)

    config = sub.add_parser(
        "config",
        help="print the effective settings as JSON",
        description="Print the settings fognode would run with (secrets masked).",
    )
    _add_settings_flags(config)
    config.set_defaults(func=_cmd_config)

    health = sub.add_parser(
        "healthcheck",
        help="exit 0 if the local gateway answers /healthz (Docker HEALTHCHECK)",
        description="Ask the gateway on this machine for /healthz, using the same settings.",
    )
    _add_settings_flags(health)
    health.add_argument("--timeout", type=float, default=3.0)
    health.set_defaults(func=_cmd_healthcheck)

    _add_certs_qr(add_certs_commands(sub))
    add_auth_commands(sub)
    add_service_commands(sub)
    add_discovery_commands(sub, ca_fingerprint=file_fingerprint, local_node=_local_node)
    add_usage_commands(sub)
    add_models_commands(sub)
    add_operate_commands(sub)
    return parser


# The commands that act on a node's data or port, and so can be aimed at the
# installed service (--node service).
NODE_COMMANDS = ("config", "healthcheck", "certs", "claims", "apikey", "usage", "models")
# What only the renewal unit does for the service (it alone holds the issuing CA).
RENEWAL_ACTIONS = ("init", "issue", "renew", "install")


def _aim_at_service(args: argparse.Namespace) -> str | None:
    """Take the installed service's settings for this process (as systemd
    gives them to the service); what stands in the way, or None."""
    if args.command not in NODE_COMMANDS:
        return (
            f"--node service is for {', '.join(NODE_COMMANDS)}; the service itself runs under "
            "systemd (systemctl restart fognode, journalctl -u fognode)"
        )
    if args.command == "certs" and args.certs_command in RENEWAL_ACTIONS:
        return (
            "the service's certificates are issued and renewed by its renewal unit, which alone "
            f"holds the issuing CA: sudo systemctl start {CERTS_UNIT} (renews when due; "
            f"journalctl -u {CERTS_UNIT} says what it did)"
        )
    try:
        found = read_unit_environment(UNIT_FILE)
    except FileNotFoundError as exc:
        return (
            f"no fognode service is installed on this machine ({exc.filename} is missing); "
            "`sudo fognode service install` installs one"
        )
    except PermissionError as exc:
        return f"cannot read {exc.filename}: run it with sudo"
    shell = ("FOGNODE_", "XDG_DATA_HOME", "GOOGLE_", "FIREBASE_")
    for name in [n for n in os.environ if n.startswith(shell)]:
        del os.environ[name]  # the service sees none of this shell's
    os.environ.update(found)
    return None


def _service_note(args: argparse.Namespace) -> None:
    """A command aimed at this user's node while a service is installed: say
    which node it reaches, and how to reach the other."""
    if args.node is not None or args.command not in NODE_COMMANDS or not UNIT_FILE.exists():
        return
    if data_dir() == Path("/var/lib/fognode"):  # the service's own, already
        return
    print(
        f"fognode: note: this command uses {data_dir()}, not the installed service's data; "
        f"`sudo fognode --node service {args.command} ...` reaches the service.",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.node == "service":
        problem = _aim_at_service(args)
        if problem is not None:
            print(f"fognode --node service: {problem}", file=sys.stderr)
            return 2
    _service_note(args)
    try:
        if args.command in ("discover", "chat"):
            if args.command == "discover":
                args.fog_check = fog_checker(load_settings(None))
            return run_discovery_command(args)
        if args.command in ("claims", "apikey"):
            settings = load_settings(None)
            return run_auth_command(
                args,
                {
                    "project_id": project_id(settings),
                    "credentials_file": settings.firebase_credentials_file,
                    "emulator_host": settings.firebase_auth_emulator_host,
                    "admin_claim": settings.admin_claim,
                    "api_keys_file": settings.api_keys_file,
                    "api_keys_check_interval": settings.api_keys_check_interval,
                    "inline": settings.api_keys,
                    "tiers": sorted(settings.quota_tiers),
                    "classes": settings.priority_classes,
                },
            )
        if args.command == "usage":
            settings = load_settings(None)
            url = settings.usage_database_url
            return run_usage_command(
                args,
                sqlite_path=settings.usage_sqlite_path,
                database_url=url.get_secret_value() if url is not None else None,
                day_start=quota_options(settings).day_start,
            )
        if args.command == "models":
            settings = load_settings(None)
            # The node serving from this data dir, where it really listens.
            running = read_running()
            tls = running.tls if running is not None else settings.tls
            return run_models_command(
                args,
                ModelsDefaults(
                    url=running.url if running is not None else _local_url(settings),
                    ca_file=settings.ca_cert_file if tls else None,
                    api_key_file=admin_key_file(),
                ),
            )
        if args.command == "drain":
            return run_drain(load_settings(None), args)
        if args.command == "fog":
            return run_fog(load_settings(None), args)
        if args.command == "certs":
            settings = load_settings(None)
            return run_certs_command(args, certs_defaults(settings))
        return int(args.func(args))
    except ValidationError as exc:
        print(f"fognode: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"fognode: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
