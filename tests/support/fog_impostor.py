"""What a node that wants into a fog without a node certificate can do, as a program.

Two roles, for a test's rogue namespace:

* ``announce``: register a service with a TXT record copied from a member
  (its fingerprint, models, node id and peer port included) but this
  host's address, in the DNS-SD domain given (python-zeroconf);
* ``serve``: a TLS server on a peer port with what every node of the fog
  has, its CA and its *server* certificate, answering a copied state and
  recording every request it gets (to a file, one line each).

Neither may ever get a request from a member: the first is only where to
ask, and the peer port of a member checks for a node certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
from pathlib import Path

from aiohttp import web
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf


async def announce(args: argparse.Namespace) -> None:
    props = dict(item.split("=", 1) for item in args.txt)
    azc = AsyncZeroconf(interfaces=[args.address], ip_version=IPVersion.V4Only)
    info = AsyncServiceInfo(
        f"{args.type}.{args.domain}",
        f"{args.instance}.{args.type}.{args.domain}",
        port=args.port,
        properties=props,
        server=args.host,
        parsed_addresses=[args.address],
    )
    await (await azc.async_register_service(info, strict=False))
    print("announced", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await azc.async_close()


def _append(path: Path, line: str) -> None:
    with path.open("a") as out:
        out.write(line + "\n")


async def serve(args: argparse.Namespace) -> None:
    state, log = args.state_bytes, Path(args.requests)

    async def record(request: web.Request) -> web.Response:
        await asyncio.to_thread(_append, log, f"{request.method} {request.path}")
        return web.Response(body=state, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", args.port, ssl_context=ctx).start()
    print("serving", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="a would-be member without a node certificate")
    roles = parser.add_subparsers(dest="role", required=True)
    a = roles.add_parser("announce")
    a.add_argument("--type", default="_https._tcp")
    a.add_argument("--domain", default="local.")
    a.add_argument("--instance", required=True)
    a.add_argument("--host", required=True, help="SRV target, e.g. rogue.local.")
    a.add_argument("--address", required=True)
    a.add_argument("--port", type=int, default=443)
    a.add_argument("--txt", nargs="*", default=[], help="key=value, copied from a member")
    s = roles.add_parser("serve")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--cert", required=True)
    s.add_argument("--key", required=True)
    s.add_argument("--ca", required=True)
    s.add_argument("--state", required=True, help="a file with the state to answer")
    s.add_argument("--requests", required=True, help="where to write what it received")
    args = parser.parse_args()
    if args.role == "serve":
        args.state_bytes = Path(args.state).read_bytes()
        Path(args.requests).write_text("")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(announce(args) if args.role == "announce" else serve(args))


if __name__ == "__main__":
    main()
