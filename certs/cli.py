"""`fognode certs ...`: init, issue, show, export.

Registered on the main `fognode` parser by gateway/cli.py. Defaults come
from the settings (certificate directory, names, key type), so the commands
agree with what `fognode serve` will load.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .authority import load_ca
from .errors import CertError
from .export import export_ca
from .inspect import describe
from .issuer import SubjectNames, default_names
from .keys import KEY_TYPES
from .lifecycle import init_ca, issue_to_files
from .passphrase import get_passphrase
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


def _passphrase(args: argparse.Namespace, *, confirm: bool = False) -> bytes | None:
    return get_passphrase(file=args.passphrase_file, confirm=confirm)


def cmd_init(args: argparse.Namespace) -> int:
    paths = _paths(args)
    passphrase = _passphrase(args, confirm=True)
    if passphrase is None:
        raise CertError(
            "no passphrase for the new CA key: set FOGNODE_CA_PASSPHRASE, pass "
            "--passphrase-file, or run in a terminal"
        )
    name = args.name or f"fognode CA ({socket.gethostname().split('.')[0]})"
    authority = init_ca(
        paths, passphrase, common_name=name, key_type=args.key_type, force=args.force
    )
    print(f"Created CA {paths.ca_cert} (key {paths.ca_key}, encrypted)")
    _print(describe(authority.cert), False)
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    paths = _paths(args)
    lan_ips = () if args.no_lan_ips else args.lan_ips
    names = SubjectNames.parse(args.names or default_names(lan_ips))
    cert = issue_to_files(
        paths,
        _passphrase(args),
        names,
        key_type=args.key_type,
        validity_days=args.days,
    )
    print(f"Issued {paths.server_cert} (key {paths.server_key})")
    _print(describe(cert), False)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    paths = _paths(args)
    shown: dict[str, Any] = {}
    for label, path in (("ca", paths.ca_cert), ("server", paths.server_cert)):
        if path.exists() or args.file is None:
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
        help="manage the local CA and the server certificate",
        description="Create the local CA, issue the server certificate, show and export them.",
    )
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="ACTION")
    certs_sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--dir",
            default=None,
            help="certificate directory (FOGNODE_CERTS_DIR, default ~/.local/share/fognode/certs)",
        )
        p.add_argument(
            "--passphrase-file",
            type=Path,
            help="file whose first line is the CA passphrase "
            "(else FOGNODE_CA_PASSPHRASE, FOGNODE_CA_PASSPHRASE_FILE, or a prompt)",
        )

    init = certs_sub.add_parser("init", help="create the root CA (once)")
    common(init)
    init.add_argument("--name", help="CA common name (default: 'fognode CA (<hostname>)')")
    init.add_argument("--key-type", choices=KEY_TYPES, default="ecdsa-p256")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=cmd_init)

    issue = certs_sub.add_parser("issue", help="issue the server certificate from the CA")
    common(issue)
    issue.add_argument(
        "names",
        nargs="*",
        help="DNS names and IP addresses (default: spezillmfog.local, <hostname>.local, "
        "localhost, loopback and LAN addresses)",
    )
    issue.add_argument("--no-lan-ips", action="store_true", help="leave LAN addresses out")
    issue.add_argument("--key-type", choices=KEY_TYPES, default=None)
    issue.add_argument(
        "--days", type=float, default=397, help="validity in days (max 825, Apple's limit)"
    )
    issue.set_defaults(func=cmd_issue)

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


def run_certs_command(
    args: argparse.Namespace,
    *,
    default_dir: Path,
    default_key_type: str,
    lan_ips: Sequence[str] = (),
) -> int:
    """Fill defaults from the settings, run the action, report CertErrors plainly.

    ``lan_ips``: this machine's LAN addresses, for the names of a new server
    certificate (the gateway looks them up; certs/ does not).
    """
    args.lan_ips = lan_ips
    if args.dir is None:
        args.dir = str(default_dir)
    if getattr(args, "key_type", "") is None:
        args.key_type = default_key_type
    try:
        result: int = args.func(args)
        return result
    except CertError as exc:
        print(f"fognode certs: {exc}", file=sys.stderr)
        return 1
