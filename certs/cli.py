"""`fognode certs ...`: init, issue, install, renew, check, show, export.

Registered on the main `fognode` parser by gateway/cli.py. Defaults come
from the settings (certificate directory, names, key type), so the commands
agree with what `fognode serve` will load.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .authority import NODE_VALIDITY_DAYS, load_ca
from .bundle import NodeBundle, install_bundle, make_bundle, read_bundle, write_bundle
from .check import check_trust
from .errors import CertError
from .export import export_ca
from .inspect import describe
from .issuer import MAX_VALIDITY_DAYS, SubjectNames, default_names, followed_names
from .keys import KEY_TYPES
from .lifecycle import (
    RenewalPolicy,
    init_ca,
    issue_to_files,
    renew,
    signing_authority,
)
from .passphrase import get_passphrase, passphrase_configured, read_passphrase_file
from .store import CertPaths, load_certs

PHONE_HELP = """\
Install the CA on a phone:
  iPhone/iPad: send {mobileconfig} (AirDrop, mail, or a web page), open it,
    Settings > General > VPN & Device Management > install the profile, then
    Settings > General > About > Certificate Trust Settings > enable full trust.
  Android: copy {der} to the phone, then Settings > Security > Encryption &
    credentials > Install a certificate > CA certificate.
  Apps that pin the CA (SpeziLLMFog) bundle {pem} instead.
Check the fingerprint on the phone against:
  SHA-256 {fingerprint}
"""


def _print(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    width = max(len(k) for k in data)
    for key, value in data.items():
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        print(f"{key.replace('_', ' '):<{width}}  {value}")


def _paths(args: argparse.Namespace) -> CertPaths:
    return CertPaths(Path(args.dir).expanduser())


def _ca_paths(args: argparse.Namespace) -> CertPaths:
    return CertPaths(Path(args.ca_dir).expanduser())


def _issuer_paths(args: argparse.Namespace) -> CertPaths:
    return CertPaths(Path(args.issuer_dir).expanduser())


def _legacy_dir(args: argparse.Namespace) -> Path:
    """Where a CA made before issuing CAs keeps its key (and setup.sh's passphrase)."""
    issuer = _issuer_paths(args)
    return issuer.directory if issuer.ca_key.exists() else _paths(args).directory


def _passphrase(
    args: argparse.Namespace, *, confirm: bool = False, beside: Path | None = None
) -> bytes | None:
    """The root key's passphrase: given, else the file setup.sh leaves beside
    the key (``beside``), else a prompt when a terminal is attached."""
    if args.passphrase_file is None and beside is not None and not passphrase_configured():
        generated = beside / "ca.passphrase"
        if generated.is_file():
            return read_passphrase_file(generated)
    return get_passphrase(file=args.passphrase_file, confirm=confirm)


def cmd_init(args: argparse.Namespace) -> int:
    paths = _ca_paths(args)
    passphrase = _passphrase(args, confirm=True)
    if passphrase is None:
        raise CertError(
            "no passphrase for the new CA key: set FOGNODE_CA_PASSPHRASE, pass "
            "--passphrase-file, or run in a terminal"
        )
    name = args.name or f"fognode CA ({socket.gethostname().split('.')[0]})"
    # Configured names outside the LAN subtrees must be permitted from the
    # start: a CA's constraints cannot be widened later.
    permit = (*args.permit, *args.configured_names)
    authority = init_ca(
        paths,
        passphrase,
        common_name=name,
        key_type=args.key_type,
        force=args.force,
        permit=permit,
    )
    print(f"Created CA {paths.ca_cert} (key {paths.ca_key}, encrypted)")
    _print(describe(authority.cert), False)
    return 0


def _policy(args: argparse.Namespace) -> RenewalPolicy:
    configured = SubjectNames.parse(args.names) if getattr(args, "names", None) else None
    if configured is None and args.configured_names:
        configured = SubjectNames.parse(args.configured_names)
    group = None
    if getattr(args, "group", None):
        group = _group_id(args.group)
    return RenewalPolicy(
        names=configured,
        defaults=SubjectNames.parse(default_names(args.lan_ips, args.node_names)),
        follow=followed_names(args.lan_ips, args.node_names),
        key_type=args.key_type,
        validity_days=getattr(args, "days", None) or args.validity_days,
        renew_before_days=args.renew_before_days,
        group=group,
    )


def _group_id(name: str) -> int:
    import grp

    try:
        return int(name) if name.isdigit() else grp.getgrnam(name).gr_gid
    except KeyError:
        raise CertError(f"no group {name!r} on this machine") from None


def cmd_issue(args: argparse.Namespace) -> int:
    if args.node:
        return _issue_node(args)
    certs = _paths(args)
    signer = signing_authority(
        _issuer_paths(args), certs, _passphrase(args, beside=_legacy_dir(args))
    )
    policy = _policy(args)
    names = policy.names or policy.defaults
    cert = issue_to_files(
        certs,
        signer,
        names,
        key_type=policy.key_type,
        validity_days=policy.validity_days,
        group=policy.group,
    )
    print(f"Issued {certs.server_cert} (key {certs.server_key})")
    _print(describe(cert), False)
    return 0


def _issue_node(args: argparse.Namespace) -> int:
    ca = _ca_paths(args)
    root = load_ca(ca, _passphrase(args, beside=ca.directory), need_key=True)
    bundle = make_bundle(root, args.node, key_type=args.key_type, validity_days=args.node_days)
    if args.install:
        _install(args, bundle)
        return 0
    out = Path(args.out or f"{bundle.name}.fognode-bundle").expanduser()
    write_bundle(bundle, out)
    print(f"Wrote the node bundle for {bundle.name} to {out} (mode 0600; it holds private keys).")
    print("Copy it to the new node over a trusted channel and run there:")
    print(
        f"  fognode certs install {out.name}      (or: sudo fognode service install --bundle "
        f"{out.name})"
    )
    print("then delete the file. docs/fog.md, 'Add a node to the fog', has the whole way.")
    return 0


def _install(args: argparse.Namespace, bundle: NodeBundle) -> None:
    certs, issuer = _paths(args), _issuer_paths(args)
    if certs.ca_cert.exists() and not args.force:
        current = load_certs(certs.ca_cert, "CA certificate")[0]
        if current != bundle.ca:
            raise CertError(
                f"{certs.ca_cert} is another CA ({current.subject.rfc4514_string()}); phones "
                "that trust it would stop trusting this node. Use --force to switch anyway."
            )
    install_bundle(bundle, certs, issuer)
    print(
        f"Installed {bundle.name}: issuing CA in {issuer.directory}, node certificate in "
        f"{certs.directory}"
    )
    reason = renew(certs, issuer, None, _policy(args))
    if reason is not None:
        print(f"Issued the server certificate {certs.server_cert} ({reason})")


def cmd_install(args: argparse.Namespace) -> int:
    _install(args, read_bundle(Path(args.bundle).expanduser()))
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    certs, issuer = _paths(args), _issuer_paths(args)
    policy = _policy(args)
    while True:
        try:
            reason = renew(
                certs,
                issuer,
                _passphrase(args, beside=_legacy_dir(args)),
                policy,
                force=args.force,
            )
        except CertError as exc:
            if args.every is None:
                raise
            print(f"fognode certs renew: {exc}", file=sys.stderr, flush=True)
        else:
            if reason is None:
                print(f"{certs.server_cert} is fine; nothing to renew", flush=True)
            else:
                print(f"Renewed {certs.server_cert}: {reason}", flush=True)
        if args.every is None:
            return 0
        args.force = False
        time.sleep(args.every)


def cmd_check(args: argparse.Namespace) -> int:
    findings = check_trust(
        _paths(args),
        _issuer_paths(args),
        renew_before=dt.timedelta(days=args.renew_before_days),
    )
    if args.json:
        print(json.dumps([f.__dict__ for f in findings], indent=2))
    else:
        for f in findings:
            print(f"{f.level:<7}  {f.subject:<6}  {f.message}")
    return 1 if any(f.level != "ok" for f in findings) else 0


def cmd_show(args: argparse.Namespace) -> int:
    paths = _paths(args)
    shown: dict[str, Any] = {}
    issuer = _issuer_paths(args)
    for label, path in (
        ("ca", paths.ca_cert),
        ("issuer", issuer.issuer_cert),
        ("server", paths.server_cert),
        ("node", paths.node_cert),
    ):
        if path.exists() or label in ("ca", "server"):
            shown[label] = describe(load_certs(path, f"{label} certificate")[0])
    if args.file is not None:
        shown = {"file": describe(load_certs(args.file, "certificate")[0])}
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    for label, data in shown.items():
        print(f"[{label}]")
        _print(data, False)
        print()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    paths = _paths(args)
    ca = load_ca(paths, None, need_key=False).cert
    out = Path(args.out).expanduser()
    result = export_ca(ca, out)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Exported the CA to {out}:")
    print(f"  {result['pem']}  (PEM, for apps and curl --cacert)")
    print(f"  {result['der']}  (DER, for Android)")
    print(f"  {result['mobileconfig']}  (profile, for iPhone/iPad/Mac)")
    print()
    print(
        PHONE_HELP.format(
            mobileconfig=result["mobileconfig"],
            der=result["der"],
            pem=result["pem"],
            fingerprint=result["sha256_fingerprint"],
        )
    )
    return 0


def add_certs_commands(sub: Any) -> Any:
    """Attach `certs` and its subcommands to the main parser's subparsers.

    Returns the `certs` subparsers, where gateway/cli.py adds `certs qr`
    (it needs the onboarding page's address, which this part does not know).
    """
    certs: argparse.ArgumentParser = sub.add_parser(
        "certs",
        help="manage the fog's CA, this node's credentials and its server certificate",
        description="Create the fog's CA, make and install node bundles, issue and renew the "
        "server certificate, check, show and export them (docs/certificates.md).",
    )
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="ACTION")
    certs_sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--dir",
            default=None,
            help="the server's certificate directory (FOGNODE_CERTS_DIR, default "
            "~/.local/share/fognode/certs)",
        )
        p.add_argument(
            "--ca-dir",
            default=None,
            help="the fog's root CA (FOGNODE_CA_DIR, default ~/.local/share/fognode/ca)",
        )
        p.add_argument(
            "--issuer-dir",
            default=None,
            help="this node's issuing CA (FOGNODE_ISSUER_DIR, default "
            "~/.local/share/fognode/issuer)",
        )
        p.add_argument(
            "--passphrase-file",
            type=Path,
            help="file whose first line is the root CA's passphrase (else "
            "FOGNODE_CA_PASSPHRASE, FOGNODE_CA_PASSPHRASE_FILE, <ca dir>/ca.passphrase, "
            "or a prompt)",
        )

    init = certs_sub.add_parser("init", help="create the fog's root CA (once)")
    common(init)
    init.add_argument("--name", help="CA common name (default: 'fognode CA (<hostname>)')")
    init.add_argument("--key-type", choices=KEY_TYPES, default="ecdsa-p256")
    init.add_argument(
        "--permit",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name or network the CA may vouch for besides .local, localhost and "
        "private addresses (repeatable; the configured FOGNODE_CERT_NAMES are added)",
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=cmd_init)

    issue = certs_sub.add_parser(
        "issue",
        help="issue the server certificate now; with --node, a bundle for a (new) node",
    )
    common(issue)
    issue.add_argument(
        "names",
        nargs="*",
        help="DNS names and IP addresses (default: FOGNODE_CERT_NAMES, else "
        "spezillmfog.local, <hostname>.local, localhost, loopback and LAN addresses)",
    )
    issue.add_argument("--no-lan-ips", action="store_true", help="leave LAN addresses out")
    issue.add_argument("--key-type", choices=KEY_TYPES, default=None)
    issue.add_argument(
        "--days",
        type=float,
        default=None,
        help=f"server certificate validity in days (at most {MAX_VALIDITY_DAYS})",
    )
    issue.add_argument(
        "--group", help="make the server key readable by this group (0640), for a server user"
    )
    issue.add_argument(
        "--node",
        metavar="NAME",
        help="make a node bundle instead: NAME's fog peer certificate and issuing CA, signed "
        "by the root (needs the root's key)",
    )
    issue.add_argument(
        "--node-days", type=float, default=NODE_VALIDITY_DAYS, help="node bundle validity"
    )
    issue.add_argument("--out", help="where to write the bundle (default ./NAME.fognode-bundle)")
    issue.add_argument(
        "--install", action="store_true", help="install the bundle on this machine instead"
    )
    issue.add_argument("--force", action="store_true", help="(--install) replace another CA")
    issue.set_defaults(func=cmd_issue)

    install = certs_sub.add_parser(
        "install", help="install a node bundle on this node and issue its server certificate"
    )
    common(install)
    install.add_argument("bundle", help="the file `fognode certs issue --node` wrote")
    install.add_argument("--force", action="store_true", help="replace another CA")
    install.set_defaults(func=cmd_install, key_type=None, group=None)

    renew_cmd = certs_sub.add_parser(
        "renew",
        help="renew the server certificate when due (run by fognode-certs.timer or compose)",
    )
    common(renew_cmd)
    renew_cmd.add_argument("--force", action="store_true", help="renew even if not due")
    renew_cmd.add_argument("--key-type", choices=KEY_TYPES, default=None)
    renew_cmd.add_argument(
        "--group", help="make the server key readable by this group (0640), for a server user"
    )
    renew_cmd.add_argument(
        "--every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="keep running, check this often",
    )
    renew_cmd.set_defaults(func=cmd_renew)

    check = certs_sub.add_parser(
        "check", help="warn about an unconstrained or long-lived CA, keys in reach, lapsing certs"
    )
    common(check)
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=cmd_check)

    show = certs_sub.add_parser("show", help="subject, names, validity and fingerprints")
    common(show)
    show.add_argument("--file", type=Path, help="show this certificate file instead")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    export = certs_sub.add_parser(
        "export", help="write the CA as .crt (PEM), .cer (DER) and .mobileconfig for phones"
    )
    common(export)
    export.add_argument("--out", default=".", help="output directory (default: current)")
    export.add_argument("--json", action="store_true")
    export.set_defaults(func=cmd_export)
    return certs_sub


@dataclass(frozen=True)
class CertsDefaults:
    """What the settings say, for the commands' defaults (gateway/cli.py builds it)."""

    certs_dir: Path
    ca_dir: Path
    issuer_dir: Path
    key_type: str
    names: tuple[str, ...]  # FOGNODE_CERT_NAMES, empty when not configured
    validity_days: float
    renew_before_days: float
    lan_ips: tuple[str, ...]  # this machine's LAN addresses (the gateway looks them up)
    node_names: tuple[str, ...] = ()  # the node's own mDNS host name (fognode-<id>.local)


def run_certs_command(args: argparse.Namespace, defaults: CertsDefaults) -> int:
    """Fill defaults from the settings, run the action, report CertErrors plainly."""
    args.lan_ips = () if getattr(args, "no_lan_ips", False) else defaults.lan_ips
    args.node_names = defaults.node_names
    args.dir = args.dir or str(defaults.certs_dir)
    args.ca_dir = getattr(args, "ca_dir", None) or str(defaults.ca_dir)
    args.issuer_dir = getattr(args, "issuer_dir", None) or str(defaults.issuer_dir)
    if getattr(args, "key_type", None) is None:
        args.key_type = defaults.key_type
    args.configured_names = defaults.names
    args.validity_days = defaults.validity_days
    args.renew_before_days = defaults.renew_before_days
    try:
        result: int = args.func(args)
        return result
    except CertError as exc:
        print(f"fognode certs: {exc}", file=sys.stderr)
        return 1
    except PermissionError as exc:
        # The serving user asking for a CA key, say: a plain refusal, no traceback.
        print(f"fognode certs: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 1
