"""``fognode drain [--off]`` and ``fognode fog``: the node on this machine, from its shell.

Both ask the running node through its admin API (``POST /admin/drain``,
``GET /admin/fog``) on its own port, with its CA and the admin API key
setup.sh made (or ``--api-key``, ``FOGNODE_API_KEY``), so that a drain
reaches every worker process through the node's one flag, exactly as the
same call from a script would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from multidict import CIMultiDict

from ...certs.errors import CertError
from ...fog.state import PeerState
from ..config.network import local_url
from ..config.paths import data_dir
from ..config.settings import Settings
from ..options import FogUnavailable, peer_tls
from ..pipeline.peers import STATE_PATH
from ..upstreams.hop import ConnectFailed, HopError, HopOptions, HopPool


class OperateError(Exception):
    pass


def _credential(args: argparse.Namespace) -> str:
    given = args.api_key or os.environ.get("FOGNODE_API_KEY")
    if given:
        return str(given)
    key_file = data_dir() / "admin-api-key"
    if key_file.is_file() and (key := key_file.read_text().strip()):
        return key
    raise OperateError(
        f"no admin API key: pass --api-key (or FOGNODE_API_KEY), or keep one in {key_file}"
    )


async def _call(
    settings: Settings, args: argparse.Namespace, method: str, path: str, body: Any
) -> Any:
    url = args.url or local_url(settings.host, settings.bind_port, tls=settings.tls)
    context: ssl.SSLContext | bool = False
    if url.startswith("https:"):
        context = ssl.create_default_context(cafile=str(settings.ca_cert_file))
    headers = {"Authorization": f"Bearer {_credential(args)}"}
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.request(
                method,
                url + path,
                json=body,
                headers=headers,
                ssl=context,
                # The node's certificate names the app's host, not 127.0.0.1.
                server_hostname=settings.app_host_name if context else None,
            ) as response,
        ):
            answer = await response.json(content_type=None)
            if response.status != 200:
                error = answer.get("error", {}) if isinstance(answer, dict) else {}
                raise OperateError(f"{response.status}: {error.get('message', answer)}")
            return answer
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OperateError(f"cannot reach the node at {url}: {exc or type(exc).__name__}") from None


def run_drain(settings: Settings, args: argparse.Namespace) -> int:
    try:
        state = asyncio.run(
            _call(settings, args, "POST", "/admin/drain", {"draining": not args.off})
        )
    except OperateError as exc:
        print(f"fognode drain: {exc}", file=sys.stderr)
        return 1
    if state["draining"]:
        print(
            "draining: no new local work; new requests go to members of the fog, running "
            "streams finish, the mDNS announcement is withdrawn. `fognode drain --off` undoes it."
        )
    else:
        print("not draining: taking local work and announced again.")
    return 0


def run_fog(settings: Settings, args: argparse.Namespace) -> int:
    try:
        view = asyncio.run(_call(settings, args, "GET", "/admin/fog", None))
    except OperateError as exc:
        print(f"fognode fog: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    if not view["fog"]:
        print("This node is no member of a fog (no node certificate, or FOGNODE_FOG=off).")
        return 0
    print(f"This node: {view['name']}")
    for c in view["candidates"]:
        age = f"{c['age']:.1f}s ago" if c["age"] is not None else "never"
        error = f"  ({c['last_error']})" if c["last_error"] else ""
        who = c["identity"] or "?"
        print(f"  {c['standing']:8} {who:24} {c['address']:22} heard {age}{error}")
    return 0


def add_operate_commands(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help="the node (default: this machine's, from its settings)")
        p.add_argument("--api-key", help="admin API key (FOGNODE_API_KEY; default: setup.sh's)")

    drain = sub.add_parser(
        "drain",
        help="stop taking new local work: hand requests to the fog, finish streams",
        description="Drain the node on this machine for maintenance: it takes no new local "
        "work, hands every new request to a member of its fog, lets its running streams "
        "finish, withdraws its mDNS announcement and says 'draining' in /readyz.",
    )
    common(drain)
    drain.add_argument("--off", action="store_true", help="stop draining")
    fog = sub.add_parser(
        "fog",
        help="the members of this node's fog, as the node sees them",
        description="Every node this node asked for its state: members, and those refused "
        "(another CA, no node certificate) or out (not answering).",
    )
    common(fog)
    fog.add_argument("--json", action="store_true", help="machine-readable output")


def fog_checker(settings: Settings) -> Callable[[str, int], Awaitable[str]] | None:
    """How `fognode discover` marks the members of this machine's fog: a state
    request over mutual TLS with this node's node certificate (None: this
    machine is no node of a fog)."""
    try:
        peers = peer_tls(settings)
    except (CertError, FogUnavailable):
        return None
    if peers is None:
        return None
    tls = peers

    async def check(address: str, port: int) -> str:
        host = f"[{address}]" if ":" in address else address
        hop = HopPool(
            f"https://{host}:{port}",
            HopOptions(
                max_connections=1, connect_timeout=2.0, ssl=tls.client, check_peer=tls.check
            ),
        )
        try:
            async with asyncio.timeout(3.0):
                answer = await hop.request("GET", STATE_PATH, CIMultiDict(), None, head_timeout=2.0)
                body = await answer.read(64 * 1024)
                answer.release()
            if answer.status != 200:
                return "not a member"
            PeerState.from_json(body)
        except ConnectFailed as exc:
            return "not a member" if exc.refused_certificate else "no answer"
        except (HopError, TimeoutError, ValueError):
            return "no answer"
        finally:
            await hop.close()
        return "member"

    return check
