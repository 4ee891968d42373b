"""`fognode discover` and `fognode chat`: the LAN seen from a client.

This module registers the commands; the discover command is here, the chat
client in chat.py, what nodes look like on a terminal in terminal.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from .browser import DEFAULT_INSTANCE, SERVICE_NAME, Change, discover_all, watch
from .chat import EXIT_NO_NODE, Fingerprint, chat_command
from .terminal import Progress, node_dict, print_table, row


async def discover_command(args: argparse.Namespace) -> int:
    interfaces = args.interface or None
    if args.watch:
        async for event in watch(interfaces=interfaces, instance_prefix=args.instance):
            if args.json:
                print(
                    json.dumps({"event": event.change.value, **node_dict(event.node)}), flush=True
                )
            else:
                sign = {Change.ADDED: "+", Change.UPDATED: "~", Change.REMOVED: "-"}
                print(sign[event.change], "  ".join(row(event.node)), flush=True)
        return 0
    with Progress("Looking for fog nodes", args.timeout):
        nodes = await discover_all(
            args.timeout, interfaces=interfaces, instance_prefix=args.instance
        )
    if args.json:
        print(json.dumps([node_dict(n) for n in nodes], indent=2))
    elif nodes:
        print_table(nodes)
    if not nodes:
        print(
            f"No fog node found within {args.timeout:g}s. Is one running on this network? "
            "(mDNS needs multicast between you and it.)",
            file=sys.stderr,
        )
        return EXIT_NO_NODE
    return 0


def add_discovery_commands(sub: Any, *, ca_fingerprint: Fingerprint) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--timeout", type=float, default=3.0, help="seconds to browse (3)")
        p.add_argument(
            "--interface",
            action="append",
            default=[],
            metavar="ADDRESS",
            help="browse only on the interface with this address (repeatable)",
        )
        p.add_argument(
            "--instance",
            default=DEFAULT_INSTANCE,
            help=f"instance name prefix of fog nodes (default: {DEFAULT_INSTANCE})",
        )

    disc = sub.add_parser(
        "discover",
        help="list the fog nodes on the LAN",
        description="Browse the LAN with mDNS for fog nodes.",
    )
    common(disc)
    disc.add_argument("--json", action="store_true", help="machine-readable output")
    disc.add_argument(
        "--watch",
        action="store_true",
        help="keep running and report nodes appearing, changing, leaving",
    )
    disc.set_defaults(discovery_func=discover_command)

    chat = sub.add_parser(
        "chat",
        help="send a prompt to the best fog node and stream the answer",
        description="Discover a node, connect by IP with the CA pinned, and "
        "stream a chat completion.",
    )
    common(chat)
    chat.add_argument("prompt")
    chat.add_argument("--model", required=True)
    chat.add_argument("--ca", type=Path, help="the fog node CA (.crt) to trust, and only it")
    chat.add_argument(
        "--name",
        default=SERVICE_NAME,
        help=f"name the node's certificate must carry, sent as Host (default {SERVICE_NAME})",
    )
    creds = chat.add_mutually_exclusive_group()
    creds.add_argument("--token", help="Firebase ID token (or FOGNODE_TOKEN)")
    creds.add_argument("--api-key", help="fognode API key (or FOGNODE_API_KEY)")
    chat.add_argument(
        "--pick",
        choices=["best", "random"],
        default="best",
        help="best: has the model, has it loaded (hot), least loaded, nearest; "
        "random: as the reference client",
    )
    chat.set_defaults(discovery_func=chat_command, ca_fingerprint=ca_fingerprint)


def run_discovery_command(args: argparse.Namespace) -> int:
    try:
        code: int = asyncio.run(args.discovery_func(args))
        return code
    except KeyboardInterrupt:
        return 130
