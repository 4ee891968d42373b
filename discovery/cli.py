"""`fognode discover` and `fognode chat`: the LAN seen from a client.

Exit codes let scripts tell failures apart: 0 ok, 1 other error, 3 no node
found, 4 TLS failed (wrong CA?), 5 credentials refused (401/403), 6 model not
on the node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .browser import SERVICE_NAME, Change, FogNode, discover_all, watch
from .choose import pick_random, rank

EXIT_NO_NODE, EXIT_TLS, EXIT_AUTH, EXIT_MODEL = 3, 4, 5, 6


def node_dict(node: FogNode) -> dict[str, Any]:
    txt = asdict(node.txt)
    txt["models"] = list(node.txt.models)
    return {
        "name": node.instance,
        "service_type": node.service_type,
        "host": node.host_name,
        "domains": list(node.domains),
        "addresses": list(node.addresses),
        "port": node.port,
        "url": node.url(),
        "txt": txt,
    }


def _row(node: FogNode) -> list[str]:
    txt = node.txt
    models = ",".join(txt.models) or "-"
    if txt.model_count > len(txt.models):
        models += f" (+{txt.model_count - len(txt.models)})"
    return [
        node.instance,
        f"{node.preferred_address()}:{node.port}",
        models,
        f"{txt.load_active}/{txt.load_capacity}" if txt.load_capacity else "-",
        txt.auth or "-",
        txt.ca_sha256[:16] or "-",
        txt.version or "-",
    ]


HEADER = ["NAME", "ADDRESS", "MODELS", "LOAD", "AUTH", "CA SHA-256", "VERSION"]


def print_table(nodes: list[FogNode], out: TextIO = sys.stdout) -> None:
    rows = [HEADER, *(_row(n) for n in nodes)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


class Progress:
    """A spinner on a terminal, one line otherwise; always on stderr."""

    def __init__(self, what: str, seconds: float) -> None:
        self.what, self.seconds = what, seconds
        self._task: asyncio.Task[None] | None = None

    async def _spin(self) -> None:
        frames = "|/-\\"
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        while True:
            elapsed = loop.time() - start
            sys.stderr.write(f"\r{frames[i % 4]} {self.what} {elapsed:4.1f}/{self.seconds:g}s")
            sys.stderr.flush()
            i += 1
            await asyncio.sleep(0.1)

    def __enter__(self) -> Progress:
        if sys.stderr.isatty():
            self._task = asyncio.ensure_future(self._spin())
        else:
            sys.stderr.write(f"{self.what} (up to {self.seconds:g}s)...\n")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            sys.stderr.write("\r\033[K")


async def _discover(args: argparse.Namespace) -> int:
    interfaces = args.interface or None
    if args.watch:
        async for event in watch(interfaces=interfaces, instance_prefix=args.instance):
            if args.json:
                print(
                    json.dumps({"event": event.change.value, **node_dict(event.node)}), flush=True
                )
            else:
                sign = {Change.ADDED: "+", Change.UPDATED: "~", Change.REMOVED: "-"}
                print(sign[event.change], "  ".join(_row(event.node)), flush=True)
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


def ca_fingerprint(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex().upper()


async def _chat(args: argparse.Namespace) -> int:
    token = (
        args.token
        or args.api_key
        or os.environ.get("FOGNODE_TOKEN")
        or os.environ.get("FOGNODE_API_KEY")
    )
    ssl_context: ssl.SSLContext | bool = True
    pinned = None
    if args.ca:
        ssl_context = ssl.create_default_context(cafile=str(args.ca))
        pinned = ca_fingerprint(args.ca)
    with Progress("Looking for fog nodes", args.timeout):
        nodes = await discover_all(
            args.timeout, interfaces=args.interface or None, instance_prefix=args.instance
        )
    if not nodes:
        print(f"No fog node found within {args.timeout:g}s.", file=sys.stderr)
        return EXIT_NO_NODE
    if pinned:
        trusted = [n for n in nodes if not n.txt.ca_sha256 or n.txt.ca_sha256 == pinned]
        for n in (n for n in nodes if n not in trusted):
            print(
                f"Skipping {n.instance} at {n.preferred_address()}: it announces another CA.",
                file=sys.stderr,
            )
        if not trusted:
            print("Fog nodes were found, but none is signed by your CA (--ca).", file=sys.stderr)
            return EXIT_TLS
        nodes = trusted
    if args.pick == "random":
        node = pick_random(nodes)
    else:
        ranked = await rank(nodes, model=args.model, ssl_context=ssl_context, name=args.name)
        node = ranked[0].node
    print(f"Using {node.instance} at {node.url()}", file=sys.stderr)
    return await stream_chat(node, args.prompt, args.model, token, ssl_context, args.name)


async def stream_chat(
    node: FogNode,
    prompt: str,
    model: str,
    token: str | None,
    ssl_context: ssl.SSLContext | bool,
    name: str = SERVICE_NAME,
) -> int:
    """Stream an answer from ``node``, connecting by IP and checking ``name``
    in its certificate (and sending it as Host), as the SpeziLLMFog app does."""
    headers = {"Host": name}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    url = f"{node.url()}{node.txt.path.rstrip('/')}/chat/completions"
    try:
        connector = aiohttp.TCPConnector(ssl=ssl_context)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.post(
                url,
                json=body,
                headers=headers,
                server_hostname=name if node.tls else None,
            ) as resp,
        ):
            if resp.status != 200:
                return await _explain_failure(resp, model)
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    print(
                        f"\nThe node reported an error: {chunk['error'].get('message')}",
                        file=sys.stderr,
                    )
                    return 1
                for choice in chunk.get("choices", []):
                    sys.stdout.write(choice.get("delta", {}).get("content") or "")
                    sys.stdout.flush()
            print()
            return 0
    except aiohttp.ClientConnectorCertificateError as exc:
        print(
            f"The node was found, but TLS failed (wrong CA?): {exc.certificate_error}",
            file=sys.stderr,
        )
        return EXIT_TLS
    except aiohttp.ClientSSLError as exc:
        print(f"The node was found, but TLS failed (wrong CA?): {exc}", file=sys.stderr)
        return EXIT_TLS
    except aiohttp.ClientError as exc:
        print(f"Cannot talk to {node.url()}: {exc}", file=sys.stderr)
        return 1


async def _explain_failure(resp: aiohttp.ClientResponse, model: str) -> int:
    text = await resp.text()
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        message = text[:200]
    if resp.status in (401, 403):
        print(
            f"{resp.status}: the node refused the credentials ({message}). "
            "Pass a fresh Firebase ID token (--token) or an API key (--api-key).",
            file=sys.stderr,
        )
        return EXIT_AUTH
    if resp.status == 404 and "not found" in (message or ""):
        print(
            f"Model {model!r} is not on this node ({message}). Pull it there first: "
            f"ollama pull {model}",
            file=sys.stderr,
        )
        return EXIT_MODEL
    print(f"The node answered {resp.status}: {message}", file=sys.stderr)
    return 1


def add_discovery_commands(sub: Any) -> None:
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
            default="SpeziLLMFog Service",
            help="instance name prefix of fog nodes (default: SpeziLLMFog Service)",
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
    disc.set_defaults(discovery_func=_discover)

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
        help="best: has the model, least loaded, nearest; random: as the reference client",
    )
    chat.set_defaults(discovery_func=_chat)


def run_discovery_command(args: argparse.Namespace) -> int:
    try:
        code: int = asyncio.run(args.discovery_func(args))
        return code
    except KeyboardInterrupt:
        return 130
