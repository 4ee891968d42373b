"""``fognode serve``: one process, or a supervisor and its workers, until told to stop.

Which of the two is the settings' choice (``workers``, default one per
core, never more than the smallest divided cap allows: supervisor.py);
either way the node stops in order at SIGINT or SIGTERM. What to tell the
operator when it cannot start is said here once, for both ways and for a
worker that cannot start.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Coroutine
from typing import Any

from ...auth.firebase import AuthConfigError
from ...certs.errors import CertError
from ...embedded.model import ModelUnavailable
from ...supervision import cores
from ...workers.processes import WorkerStartError
from ..auth_setup import UnsafeConfiguration
from ..config.network import local_url
from ..config.settings import Settings
from ..pipeline.quotas import UsageStoreUnavailable
from .lifecycle import Mode, running_node
from .server import OneProcess, log_serving, settle_heap, stop_signals
from .supervisor import SPLIT_CAPS, Workers, worker_count

log = logging.getLogger("fognode.server")


async def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM, then stop in order (lifecycle.py)."""
    count, wanted = worker_count(settings), settings.workers or cores()
    if count < wanted:
        log.warning(
            "serving with %d worker process(es), not %d: each worker enforces a share of "
            "at least 1 of %s, so there are no more workers than the smallest of them",
            count,
            wanted,
            ", ".join(f"{name}={getattr(settings, name)}" for name in SPLIT_CAPS),
        )
    mode: Mode = Workers(count) if count > 1 else OneProcess()
    stop = stop_signals()
    async with running_node(settings, mode) as node:
        if count == 1:
            settle_heap()  # this process serves: what it loaded lives as long as it does
        announced = node.announcer is not None and node.announcer.announced
        url = local_url(node.settings.host, node.port, tls=node.tls is not None)
        log_serving(node.settings, url, node.pool.base, node.tls, announced, node.port, count)
        await stop.wait()
        log.info("shutting down; open requests get %ss to finish", settings.shutdown_timeout)


def run_loop(main: Coroutine[Any, Any, None], kind: str) -> None:
    """Run on uvloop when asked for (or, with `auto`, when it is installed)."""
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise SystemExit("fognode: event_loop=uvloop but uvloop is not installed") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def startup_failure(exc: BaseException, settings: Settings) -> str | None:
    """What to tell the operator when serving could not start (None: a bug,
    let its traceback show). A worker process that cannot start says it this
    way too, and its supervisor prints it once (WorkerStartError)."""
    if isinstance(exc, WorkerStartError):
        return str(exc)
    if isinstance(exc, CertError):
        return f"fognode: cannot serve TLS: {exc}"
    if isinstance(exc, UnsafeConfiguration | AuthConfigError):
        return f"fognode: refusing to start: {exc}"
    if isinstance(exc, ModelUnavailable | UsageStoreUnavailable):
        return f"fognode: {exc}"
    if isinstance(exc, OSError) and exc.filename is not None:
        # A file it could not read or write (its data dir, say): not the port.
        return f"fognode: cannot use {exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        message = (
            f"fognode: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        )
        if exc.errno == errno.EACCES and settings.bind_port < 1024:
            message += "\n" + PRIVILEGED_PORT_HINT.format(port=settings.bind_port)
        return message
    return None


PRIVILEGED_PORT_HINT = """\
Ports below 1024 need the CAP_NET_BIND_SERVICE capability (not root). Either
  sudo .venv/bin/fognode service install   # systemd, unprivileged user, port 443
or give this Python the one capability:
  sudo setcap cap_net_bind_service=+ep "$(readlink -f .venv/bin/python)"
or listen on a high port and redirect {port} to it:
  sudo iptables -t nat -A PREROUTING -p tcp --dport {port} -j REDIRECT --to-ports 8443"""
