"""`fognode claims ...` and `fognode apikey ...`.

Granting access is part of running a node: the operator gives a user the
custom claims the policy asks for (and the admin claim for model
management), or makes an API key for a script. Registered on the main
parser by gateway/cli.py, which passes in the Firebase settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..moments import iso_utc, parse_span
from .api_keys import ApiKeyEntry, entry_for, new_key, parse_expiry
from .key_file import KeyFile


def add_auth_commands(sub: Any) -> None:
    claims = sub.add_parser(
        "claims",
        help="show or set a Firebase user's custom claims (access and admin)",
        description="Custom claims decide what a user may do on this node. Uses the Firebase "
        "settings (service account, or the Auth Emulator in development).",
    )
    claims_sub = claims.add_subparsers(dest="claims_command", metavar="ACTION")
    claims_sub.required = True
    show = claims_sub.add_parser("show", help="print a user's custom claims")
    show.add_argument("user", help="uid or email address")
    show.set_defaults(auth_func=_claims_show)
    set_ = claims_sub.add_parser("set", help="add, change or remove custom claims")
    set_.add_argument("user", help="uid or email address")
    set_.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='claim to set, value as JSON (fog=true, role="clinician"); repeatable',
    )
    set_.add_argument("--remove", action="append", default=[], metavar="NAME")
    admin = set_.add_mutually_exclusive_group()
    admin.add_argument("--admin", action="store_true", help="grant model management")
    admin.add_argument("--no-admin", action="store_true", help="revoke model management")
    set_.set_defaults(auth_func=_claims_set)

    apikey = sub.add_parser(
        "apikey",
        help="make, list and revoke API keys (the node follows its key file without a restart)",
        description="API keys live in the node's key file (FOGNODE_API_KEYS_FILE, default "
        "<data dir>/api-keys), which the running node watches: a key made or revoked here "
        "works, or stops working, on every worker within seconds.",
    )
    apikey_sub = apikey.add_subparsers(dest="apikey_command", metavar="ACTION")
    apikey_sub.required = True
    create = apikey_sub.add_parser(
        "create", help="make a key, add it to the key file and print it (shown once)"
    )
    create.add_argument("name", help="who or what the key is for (shown in logs and usage)")
    create.add_argument("--admin", action="store_true", help="allow model management too")
    create.add_argument(
        "--models",
        metavar="M1,M2",
        help="the only models it may use (403 for any other; /v1/models lists only these)",
    )
    create.add_argument(
        "--expires",
        metavar="WHEN",
        help="when it stops working (401 after): a time from now (30d, 12h, 90m, 2w) "
        "or a moment (2027-01-06T12:00:00Z)",
    )
    create.add_argument("--tier", help="its budgets: a tier of quota_tiers")
    create.add_argument(
        "--class",
        dest="priority",
        metavar="CLASS",
        help="its queue: a class of priority_classes (interactive goes before batch)",
    )
    create.add_argument("--json", action="store_true", help='print {"key", "entry", "file"}')
    create.add_argument(
        "--print-only",
        action="store_true",
        help="add it nowhere: print the key and its entry (for FOGNODE_API_KEYS, another node)",
    )
    create.set_defaults(auth_func=_apikey_create)
    revoke = apikey_sub.add_parser(
        "revoke", help="remove a key from the key file: it stops working within seconds"
    )
    revoke.add_argument("name")
    revoke.set_defaults(auth_func=_apikey_revoke)
    listing = apikey_sub.add_parser(
        "list", help="the keys' names, roles, scopes and expiry (never the keys)"
    )
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(auth_func=_apikey_list)


def _key_file(options: dict[str, Any]) -> KeyFile | None:
    path = options.get("api_keys_file")
    return KeyFile(Path(path)) if path else None


def _followed(options: dict[str, Any]) -> str:
    every = options.get("api_keys_check_interval")
    return f"within {every:g} s" if every else "within seconds"


def _apikey_create(args: argparse.Namespace, options: dict[str, Any]) -> int:
    if ":" in args.name or not args.name.strip():
        print("fognode apikey: the name must be non-empty and contain no ':'", file=sys.stderr)
        return 2
    try:
        scope = _scope(args, options)
    except ValueError as exc:
        print(f"fognode apikey: {exc}", file=sys.stderr)
        return 2
    key = new_key()
    entry = entry_for(key, args.name, admin=args.admin, **scope)
    file = None if args.print_only else _key_file(options)
    if file is not None:
        if args.name in {ApiKeyEntry.parse(line).name for line in options.get("inline", ())}:
            print(
                f"fognode apikey: FOGNODE_API_KEYS already has a key named {args.name!r}",
                file=sys.stderr,
            )
            return 2
        file.add(entry)
    if args.json:
        print(json.dumps({"key": key, "entry": entry, "file": str(file.path) if file else None}))
        return 0
    print(f"API key for {args.name} (shown once; give it to them):\n  {key}")
    terms = ApiKeyEntry.parse(entry).terms()
    if terms:
        print("Scope: " + ", ".join(f"{k} {v}" for k, v in terms.items()))
    if file is not None:
        print(
            f"Added to {file.path}; a running node takes it {_followed(options)}, "
            "without a restart. Revoke it with: fognode apikey revoke " + args.name
        )
    else:
        print(f"Its entry, for FOGNODE_API_KEYS or another node's key file:\n  {entry}")
    return 0


def expiry(text: str, now: float) -> float:
    """``30d``, ``12h``, ``90m``, ``2w`` from ``now``, or a moment (ISO 8601;
    UTC without a zone), as Unix time in whole seconds (the file holds them)."""
    span = parse_span(text)
    if span is not None and span > 0:
        return float(int(now + span))
    moment = parse_expiry(text)
    if moment <= now:
        raise ValueError(f"--expires {text} is in the past")
    return float(int(moment))


def _scope(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """The key's scope from the flags, checked against this node's settings
    (a class or tier it does not have would silently be the default)."""
    scope: dict[str, Any] = {}
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",")]
        if not all(models) or any(" " in m or "=" in m for m in models):
            raise ValueError("--models takes model names separated by commas: m1,m2")
        scope["models"] = models
    if args.expires is not None:
        scope["expires"] = expiry(args.expires, time.time())
    for flag, value, known in (
        ("--tier", args.tier, options.get("tiers")),
        ("--class", args.priority, options.get("classes")),
    ):
        if value is None:
            continue
        if not value or any(c.isspace() for c in value) or "=" in value:
            raise ValueError(f"{flag} takes one name")
        if known is not None and value not in known:
            have = ", ".join(known) or "none configured"
            raise ValueError(f"{flag} {value}: this node has no such one ({have})")
    if args.tier is not None:
        scope["tier"] = args.tier
    if args.priority is not None:
        scope["priority"] = args.priority
    return scope


def _apikey_revoke(args: argparse.Namespace, options: dict[str, Any]) -> int:
    file = _key_file(options)
    if file is None:
        print("fognode apikey: no key file (FOGNODE_API_KEYS_FILE is empty)", file=sys.stderr)
        return 2
    if file.revoke(args.name) is None:
        inline = {ApiKeyEntry.parse(line).name for line in options.get("inline", ())}
        where = (
            "it is in FOGNODE_API_KEYS: remove it there and restart the node"
            if args.name in inline
            else "nothing was changed"
        )
        print(
            f"fognode apikey: no key named {args.name!r} in {file.path}; {where}", file=sys.stderr
        )
        return 1
    print(
        f"Revoked {args.name}: removed from {file.path}; a running node refuses it "
        f"{_followed(options)}."
    )
    return 0


def _apikey_list(args: argparse.Namespace, options: dict[str, Any]) -> int:
    file = _key_file(options)
    rows = [("FOGNODE_API_KEYS", ApiKeyEntry.parse(line)) for line in options.get("inline", ())]
    rows += [(str(file.path), entry) for entry in file.entries()] if file else []
    now = time.time()
    if args.json:
        listed = [
            {
                "name": e.name,
                "role": "admin" if e.admin else "user",
                "models": list(e.models) if e.models is not None else None,
                "expires": iso_utc(e.expires) if e.expires is not None else None,
                "expired": e.expired(now),
                "tier": e.tier,
                "class": e.priority,
                "from": where,
            }
            for where, e in rows
        ]
        print(json.dumps(listed, indent=2))
        return 0
    if not rows:
        where = f" in {file.path}" if file else ""
        print(f"No API keys{where}. Make one: fognode apikey create NAME")
        return 0
    table = [("NAME", "ROLE", "MODELS", "EXPIRES", "TIER", "CLASS", "FROM")]
    for where, e in rows:
        ends = "never" if e.expires is None else iso_utc(e.expires)
        table.append(
            (
                e.name,
                "admin" if e.admin else "user",
                ",".join(e.models) if e.models is not None else "all",
                ends + (" (expired)" if e.expired(now) else ""),
                e.tier or "-",
                e.priority or "-",
                where,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]))
    return 0


def _firebase_app(options: dict[str, Any]) -> Any:
    import os

    import firebase_admin
    from firebase_admin import credentials

    if options.get("emulator_host"):
        os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = options["emulator_host"]
    cred = None
    if options.get("credentials_file"):
        cred = credentials.Certificate(str(options["credentials_file"]))
    elif not options.get("emulator_host"):
        raise SystemExit(
            "fognode claims: needs a service account (FOGNODE_FIREBASE_CREDENTIALS_FILE), "
            "or the Auth Emulator in development (FOGNODE_FIREBASE_AUTH_EMULATOR_HOST)."
        )
    return firebase_admin.initialize_app(
        cred, options={"projectId": options.get("project_id")}, name="fognode-cli"
    )


def _user(app: Any, who: str) -> Any:
    from firebase_admin import auth

    if "@" in who:
        return auth.get_user_by_email(who, app=app)
    return auth.get_user(who, app=app)


def _claims_show(args: argparse.Namespace, options: dict[str, Any]) -> int:
    app = _firebase_app(options)
    user = _user(app, args.user)
    print(
        json.dumps(
            {"uid": user.uid, "email": user.email, "claims": user.custom_claims or {}}, indent=2
        )
    )
    return 0


def _claims_set(args: argparse.Namespace, options: dict[str, Any]) -> int:
    from firebase_admin import auth

    updates: dict[str, Any] = {}
    for item in args.claim:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            print(f"fognode claims: --claim {item!r} is not NAME=JSON", file=sys.stderr)
            return 2
        try:
            updates[name] = json.loads(raw)
        except ValueError:
            updates[name] = raw  # a bare word is a string
    app = _firebase_app(options)
    user = _user(app, args.user)
    claims = dict(user.custom_claims or {})
    admin_claim = options.get("admin_claim", "admin")
    if args.admin:
        updates[admin_claim] = True
    claims.update(updates)
    for name in [*args.remove, *([admin_claim] if args.no_admin else [])]:
        claims.pop(name, None)
    auth.set_custom_user_claims(user.uid, claims or None, app=app)
    print(json.dumps({"uid": user.uid, "email": user.email, "claims": claims}, indent=2))
    print(
        "The user's next ID token carries these claims (tokens refresh within the hour; "
        "signing in again takes effect at once).",
        file=sys.stderr,
    )
    return 0


def run_auth_command(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """``options``: project_id, credentials_file, emulator_host, admin_claim; for
    `apikey`: api_keys_file, api_keys_check_interval, inline (FOGNODE_API_KEYS),
    tiers and classes (the node's, to check --tier and --class against)."""
    from firebase_admin import exceptions

    try:
        result: int = args.auth_func(args, options)
        return result
    except exceptions.FirebaseError as exc:
        print(f"fognode {args.command}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"fognode {args.command}: {exc}", file=sys.stderr)
        return 1
