"""`fognode models list | pull NAME | rm NAME`.

Registered on the main parser by gateway/cli.py, which also supplies the
defaults for the node on this machine (its URL, CA and the admin key
setup.sh made), so on the node itself `fognode models pull llama3.2:1b` is
all it takes. Progress goes to stderr, results to stdout.

Exit codes (as `fognode chat`): 0 ok, 1 other error, 3 node unreachable,
4 TLS failed, 5 credentials refused (401/403), 6 no such model, 7 the node
has no Ollama behind it (its embedded model, or an OpenAI-compatible
server): nothing to pull or remove there, 130 interrupted (the pull is
cancelled on the node).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .client import EXIT_MODEL, ModelAdmin, NodeError, NodeOptions, NoModelManagement
from .progress import PullProgress


@dataclass(frozen=True)
class ModelsDefaults:
    """The node on this machine, for when no --url/--ca/--api-key is given."""

    url: str
    ca_file: Path | None
    api_key_file: Path | None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


async def _list(node: ModelAdmin, args: argparse.Namespace) -> int:
    try:
        models = await node.models()
    except NoModelManagement as exc:
        # The node serves models all the same: say which, and why no more.
        names = await node.openai_models()
        if args.json:
            print(json.dumps({"models": [{"name": n} for n in names], "managed": False}, indent=2))
        else:
            print("NAME")
            print("\n".join(names))
        print(f"fognode models: {exc}", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps({"models": models}, indent=2))
        return 0
    if not models:
        print("The node has no models yet. Pull one: fognode models pull llama3.2:1b")
        return 0
    rows = [["NAME", "SIZE", "PARAMETERS", "QUANTIZATION", "LOADED"]]
    for m in models:
        details = m.get("details") or {}
        rows.append(
            [
                str(m.get("name") or m.get("model")),
                _size(float(m.get("size") or 0)),
                str(details.get("parameter_size") or "-"),
                str(details.get("quantization_level") or "-"),
                "yes" if m["loaded"] else "",
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


class PullBars:
    """One progress bar per layer, as Ollama's own CLI shows a pull.

    tqdm computes the rate and the time left from when each update arrives;
    statuses without a layer are printed as lines of their own.
    """

    def __init__(self) -> None:
        self.progress = PullProgress()
        self._bars: dict[str, tqdm[Any]] = {}
        self._last_status = ""

    def update(self, line: dict[str, Any]) -> None:
        self.progress.update(line)
        layer = self.progress.current
        if layer is None:
            if self.progress.status != self._last_status:
                self.close()
                print(self.progress.status, file=sys.stderr, flush=True)
            self._last_status = self.progress.status
            return
        bar = self._bars.get(layer.digest)
        if bar is None:
            self.close()  # layers come one after another
            bar = self._bars[layer.digest] = tqdm(
                total=layer.total or None,
                desc=f"pulling {layer.short}",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
                # Ollama reports every 60 ms: draw each report, no sampling.
                mininterval=0,
                miniters=1,
            )
        if layer.total and bar.total != layer.total:
            bar.total = layer.total
        bar.update(layer.completed - bar.n)
        self._last_status = self.progress.status

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


async def _pull(node: ModelAdmin, args: argparse.Namespace) -> int:
    bars = PullBars()
    started = time.monotonic()
    try:
        async for line in node.pull(args.name, insecure=args.insecure):
            bars.update(line)
    finally:
        bars.close()
    done = bars.progress
    if not done.done:
        raise NodeError(f"The pull of {args.name!r} ended without success ({done.status!r}).")
    print(
        f"Pulled {args.name} ({_size(done.total_bytes)}) in {time.monotonic() - started:.1f}s",
        flush=True,
    )
    return 0


async def _rm(node: ModelAdmin, args: argparse.Namespace) -> int:
    await node.delete(args.name)
    print(f"Deleted {args.name}")
    return 0


def _credential(args: argparse.Namespace, defaults: ModelsDefaults) -> str | None:
    given = (
        args.token
        or args.api_key
        or os.environ.get("FOGNODE_TOKEN")
        or os.environ.get("FOGNODE_API_KEY")
    )
    if given:
        return str(given)
    key_file = defaults.api_key_file
    if key_file is not None and key_file.is_file():
        return key_file.read_text().strip() or None
    return None


def options_from(args: argparse.Namespace, defaults: ModelsDefaults) -> NodeOptions:
    ca = args.ca or os.environ.get("FOGNODE_CA")
    ca_file = Path(ca).expanduser() if ca else defaults.ca_file
    if ca_file is not None and not ca_file.is_file():
        raise NodeError(f"CA certificate {ca_file} not found (--ca, or FOGNODE_CA)")
    return NodeOptions(
        url=args.url or os.environ.get("FOGNODE_URL") or defaults.url,
        ca_file=ca_file,
        credential=_credential(args, defaults),
        server_name=args.server_name,
    )


def add_models_commands(sub: Any) -> None:
    models = sub.add_parser(
        "models",
        help="list, pull (with progress) and remove a node's models",
        description="Manage the models of a fog node through its admin API (an admin API "
        "key or a Firebase admin's token). Without --url: the node on this machine.",
    )
    actions = models.add_subparsers(dest="models_command", metavar="ACTION")
    actions.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--url", help="the node, https://HOST:PORT (FOGNODE_URL; default: this machine's)"
        )
        p.add_argument("--ca", type=Path, help="the node's CA certificate (FOGNODE_CA)")
        p.add_argument(
            "--server-name",
            help="name to check in the node's certificate and send as Host "
            "(when --url has an address the certificate lacks; e.g. spezillmfog.local)",
        )
        creds = p.add_mutually_exclusive_group()
        creds.add_argument(
            "--api-key",
            help="admin API key (FOGNODE_API_KEY; default: the one setup.sh made on this machine)",
        )
        creds.add_argument("--token", help="a Firebase admin's ID token (FOGNODE_TOKEN)")

    listing = actions.add_parser("list", help="the node's models, and which are loaded")
    common(listing)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(models_func=_list)

    pull = actions.add_parser(
        "pull", help="pull a model onto the node, with progress (Ctrl-C cancels it)"
    )
    common(pull)
    pull.add_argument("name", help="model name, e.g. llama3.2:1b")
    pull.add_argument(
        "--insecure", action="store_true", help="let Ollama use a registry without TLS"
    )
    pull.set_defaults(models_func=_pull)

    rm = actions.add_parser("rm", help="delete a model from the node")
    common(rm)
    rm.add_argument("name")
    rm.set_defaults(models_func=_rm)


async def _run(args: argparse.Namespace, options: NodeOptions) -> int:
    async with ModelAdmin(options) as node:
        code: int = await args.models_func(node, args)
        return code


def run_models_command(args: argparse.Namespace, defaults: ModelsDefaults) -> int:
    try:
        return asyncio.run(_run(args, options_from(args, defaults)))
    except NodeError as exc:
        print(f"fognode models: {exc}", file=sys.stderr)
        if exc.exit_code == EXIT_MODEL and args.models_command == "pull":
            print("Check the name at https://ollama.com/library.", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # asyncio.run cancelled the request: its connection is closed, and the
        # node passes that on, so Ollama stops downloading.
        if args.models_command == "pull":
            print(
                "\nInterrupted: the pull was cancelled on the node. Pull again to resume; "
                "Ollama keeps what it has downloaded.",
                file=sys.stderr,
            )
        return 130
