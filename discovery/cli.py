"""`fognode discover` and `fognode chat`: the LAN seen from a client.

This module registers the commands; the discover command is here, the chat
client in chat.py, what nodes look like on a terminal in terminal.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .browser import DEFAULT_INSTANCE, SERVICE_NAME, Change, Changes, FogNode, discover_all, watch
from .chat import EXIT_NO_NODE, Fingerprint, LocalNodeLookup, chat_command, nothing_found
from .terminal import Progress, node_dict, print_table, row

# Asks a node's peer port whether it is a member of this machine's fog:
# "member", "not a member" (its certificate is not a node certificate of
# this fog), or "no answer". Given by the gateway when this machine has
# peer credentials (a node of a fog); discovery itself holds none.
FogCheck = Callable[[str, int], Awaitable[str]]


async def _fog_standings(nodes: list[FogNode], check: FogCheck | None) -> dict[int, str]:
    """What the check says of each node that announces a peer port, by index."""
    asked = [(i, n) for i, n in enumerate(nodes) if n.txt.fog_port and check is not None]
    if check is None or not asked:
        return {}
    answers = await asyncio.gather(
        *(check(n.preferred_address(), n.txt.fog_port) for _, n in asked)
    )
    return {i: answer for (i, _), answer in zip(asked, answers, strict=True)}


async def discover_command(args: argparse.Namespace) -> int:
    interfaces = args.interface or None
    if args.watch:
        changes = Changes()
        async for event in watch(interfaces=interfaces, instance_prefix=args.instance):
            if not changes.worth_telling(event):
                continue
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
    fog = await _fog_standings(nodes, args.fog_check)
    if args.json:
        print(
            json.dumps(
                [
                    {**node_dict(n), **({"fog": fog[i]} if i in fog else {})}
                    for i, n in enumerate(nodes)
                ],
                indent=2,
            )
        )
    elif nodes:
        print_table(nodes, fog=[fog.get(i, "-") for i in range(len(nodes))] if fog else None)
    if not nodes:
        print(nothing_found(args.timeout, args.local_node(), "chat"), file=sys.stderr)
        return EXIT_NO_NODE
    return 0


def add_discovery_commands(
    sub: Any,
    *,
    ca_fingerprint: Fingerprint,
    local_node: LocalNodeLookup,
    fog_check: FogCheck | None = None,
) -> None:
    """``local_node``: the node serving on this machine, if any (the gateway
    knows), so that finding nothing can say why; ``fog_check``: how `fognode
    discover` marks the members of this machine's fog (None: it is no node of
    a fog)."""

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
    disc.set_defaults(discovery_func=discover_command, fog_check=fog_check, local_node=local_node)

    chat = sub.add_parser(
        "chat",
        help="send a prompt to the best fog node and stream the answer",
        description="Discover a node, connect by IP with the CA pinned, and "
        "stream a chat completion.",
    )
    common(chat)
    chat.add_argument(
        "--url",
        metavar="URL",
        help="the node to use, without discovery: https://HOST:PORT (for a node that is not "
        "announced, one bound to 127.0.0.1 say, or across networks mDNS does not cross)",
    )
    chat.add_argument("prompt")
    chat.add_argument("--model", required=True)
    chat.add_argument("--ca", type=Path, help="the fog node CA (.crt) to trust, and only it")
    chat.add_argument(
        "--name",
        help=f"name the node's certificate must carry, sent as Host (default {SERVICE_NAME}; "
        "with --url https://NAME:PORT, NAME)",
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
    chat.set_defaults(
        discovery_func=chat_command, ca_fingerprint=ca_fingerprint, local_node=local_node
    )


def run_discovery_command(args: argparse.Namespace) -> int:
    try:
        code: int = asyncio.run(args.discovery_func(args))
        return code
    except KeyboardInterrupt:
        return 130
