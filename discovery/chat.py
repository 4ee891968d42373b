"""`fognode chat`: find the best node (or one at random, as the reference client
does) and stream an answer from it, as a client on the LAN would.

Exit codes let scripts tell failures apart: 0 ok, 1 other error, 3 no node
found, 4 TLS failed (wrong CA?), 5 credentials refused (401/403), 6 model not
on the node.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from .browser import SERVICE_NAME, FogNode, discover_all, resolve_host
from .choose import pick_random, rank
from .terminal import Progress

EXIT_NO_NODE, EXIT_TLS, EXIT_AUTH, EXIT_MODEL = 3, 4, 5, 6

# The SHA-256 of a CA certificate file, hex without colons; the gateway passes
# certs/' own function (discovery/ does not import certs/).
Fingerprint = Callable[[Path], str]


@dataclass(frozen=True)
class LocalNode:
    """A node serving on this machine, as it says itself (the gateway reads
    its account, gateway/config/running.py): why discovery may not see it."""

    url: str  # where this machine reaches it
    loopback_only: bool  # bound to 127.0.0.1: not announced on the LAN


# The node on this machine, if one runs (None: none, or not known).
LocalNodeLookup = Callable[[], LocalNode | None]


def nothing_found(seconds: float, local: LocalNode | None, command: str) -> str:
    """What to say when browsing found no node, with the likely reason."""
    said = f"No fog node found within {seconds:g}s."
    if local is not None and local.loopback_only:
        return (
            f"{said} The node on this machine listens on 127.0.0.1 only, so it is not "
            "announced: serve the LAN with `fognode serve --host '*'`, or name it: "
            f"fognode {command} --url {local.url} ..."
        )
    return (
        f"{said} Is one running on this network? mDNS needs multicast between you and it, "
        "and a node bound to 127.0.0.1 is not announced. Name a node directly with "
        "--url https://HOST:PORT (fognode chat)."
    )


async def chat_command(args: argparse.Namespace) -> int:
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
        pinned = args.ca_fingerprint(args.ca)
    if args.url:
        target = Target.of_url(args.url, args.name)
        target = await target.resolved(args.timeout, args.interface or None)
        print(f"Using {target.base}", file=sys.stderr)
        return await stream_chat(target, args.prompt, args.model, token, ssl_context)
    with Progress("Looking for fog nodes", args.timeout):
        nodes = await discover_all(
            args.timeout, interfaces=args.interface or None, instance_prefix=args.instance
        )
    if not nodes:
        print(nothing_found(args.timeout, args.local_node(), "chat"), file=sys.stderr)
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
        ranked = await rank(
            nodes, model=args.model, ssl_context=ssl_context, name=args.name or SERVICE_NAME
        )
        node = ranked[0].node
    print(f"Using {node.instance} at {node.url()}", file=sys.stderr)
    return await stream_chat(
        Target.of_node(node, args.name or SERVICE_NAME),
        args.prompt,
        args.model,
        token,
        ssl_context,
    )


@dataclass(frozen=True)
class Target:
    """Where a chat goes: a URL, and the name its certificate must carry,
    sent as Host (spezillmfog.local, as the SpeziLLMFog app sends it)."""

    base: str  # https://10.0.0.5:8443/v1
    name: str
    tls: bool

    async def resolved(self, seconds: float, interfaces: list[str] | None) -> Target:
        """A `.local` host asked by mDNS and reached by its address (its name
        still checked and sent): the system may have no mDNS resolver."""
        parsed = urlsplit(self.base)
        host = parsed.hostname or ""
        if not host.endswith(".local"):
            return self
        addresses = await resolve_host(host, seconds, interfaces=interfaces)
        if not addresses:
            return self  # the system's resolver may still know it
        shown = f"[{addresses[0]}]" if ":" in addresses[0] else addresses[0]
        netloc = f"{shown}:{parsed.port}" if parsed.port else shown
        return replace(self, base=parsed._replace(netloc=netloc).geturl())

    @classmethod
    def of_node(cls, node: FogNode, name: str) -> Target:
        return cls(f"{node.url()}{node.txt.path.rstrip('/')}", name, node.tls)

    @classmethod
    def of_url(cls, url: str, name: str | None) -> Target:
        """A node named by hand: https://HOST:PORT (the API under /v1). Its
        certificate is checked for ``name``, else for HOST when it is a name
        rather than an address, else for spezillmfog.local."""
        parsed = urlsplit(url if "://" in url else f"https://{url}")
        host = parsed.hostname or ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            implied = host or SERVICE_NAME
        else:
            implied = SERVICE_NAME
        path = parsed.path.rstrip("/") or "/v1"
        base = f"{parsed.scheme}://{parsed.netloc}{path}"
        return cls(base, name or implied, parsed.scheme == "https")


async def stream_chat(
    target: Target,
    prompt: str,
    model: str,
    token: str | None,
    ssl_context: ssl.SSLContext | bool,
) -> int:
    """Stream an answer from ``target``, connecting to its address and checking
    its name in the certificate (and sending it as Host), as the SpeziLLMFog
    app does."""
    headers = {"Host": target.name}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    url = f"{target.base}/chat/completions"
    try:
        connector = aiohttp.TCPConnector(ssl=ssl_context)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.post(
                url,
                json=body,
                headers=headers,
                server_hostname=target.name if target.tls else None,
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
        print(f"Cannot talk to {target.base}: {exc}", file=sys.stderr)
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
        print(f"Model {model!r} is not on this node ({message}).", file=sys.stderr)
        return EXIT_MODEL
    print(f"The node answered {resp.status}: {message}", file=sys.stderr)
    return 1
