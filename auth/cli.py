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
from typing import Any

from .api_keys import entry_for, new_key


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

    apikey = sub.add_parser("apikey", help="make static API keys for scripts and tools")
    apikey_sub = apikey.add_subparsers(dest="apikey_command", metavar="ACTION")
    apikey_sub.required = True
    create = apikey_sub.add_parser(
        "create",
        help="print a new key and the entry to add to FOGNODE_API_KEYS or the keys file",
    )
    create.add_argument("name", help="who or what the key is for (shown in logs)")
    create.add_argument("--admin", action="store_true", help="allow model management too")
    create.add_argument("--json", action="store_true")
    create.set_defaults(auth_func=_apikey_create)


def _apikey_create(args: argparse.Namespace, _: dict[str, Any]) -> int:
    if ":" in args.name or not args.name.strip():
        print("fognode apikey: the name must be non-empty and contain no ':'", file=sys.stderr)
        return 2
    key = new_key()
    entry = entry_for(key, args.name, admin=args.admin)
    if args.json:
        print(json.dumps({"key": key, "entry": entry}))
        return 0
    print(f"API key (shown once, give it to {args.name}):\n  {key}\n")
    print("Add this entry to FOGNODE_API_KEYS or to the file in FOGNODE_API_KEYS_FILE:")
    print(f"  {entry}")
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
    """``options``: project_id, credentials_file, emulator_host, admin_claim."""
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
