"""The phone onboarding page (web/onboarding), served beside the API by `fognode serve`.

Wiring only: from the settings and this machine's addresses it works out
where the page listens and which link its QR code carries (the same link
`fognode certs qr` prints), and starts it on the API's connection guard, so
its port counts against the same connection caps and slow-client deadlines.
A page that cannot bind its port (80 needs CAP_NET_BIND_SERVICE) is not a
reason to stop serving the API: the node says how to fix it and goes on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any

from aiohttp import web
from cryptography import x509

from ...certs.errors import CertError
from ...certs.export import export_forms
from ...certs.store import load_certs
from ...web.onboarding import OnboardingOptions, OnboardingSite, onboarding_urls, start_onboarding
from ..config.network import bind_host, is_wildcard, lan_addresses, wildcard_family
from ..config.settings import Settings
from ..transport.connections import ConnectionGuard, ConnectionLimits
from ..transport.slow_clients import GuardedAppRunner
from ..transport.tls import TlsTerminator

log = logging.getLogger("fognode.onboarding")

# The page's own connection cap where it shares no guard with the API (the
# supervisor of worker processes serves it): a few phones at a time.
ONBOARDING_CONNECTIONS = 64


def onboarding_links(
    settings: Settings, *, port: int | None = None, url: str | None = None
) -> list[str]:
    """The page's URLs, the QR code's first: FOGNODE_ONBOARDING_URL (or ``url``),
    else where it listens (one address, or this machine's LAN addresses of the
    bound family). ``port`` and ``url`` override the settings (`certs qr` flags)."""
    host = settings.host
    family = wildcard_family(host)
    addresses = [ip for ip in lan_addresses() if family is None or ip.version == family]
    public = url or (str(settings.onboarding_url) if settings.onboarding_url else None)
    return onboarding_urls(
        port=settings.onboarding_port if port is None else port,
        addresses=addresses,
        bound=None if is_wildcard(host) else host,
        public_url=public,
    )


async def _ca(settings: Settings, tls: TlsTerminator | None) -> x509.Certificate | None:
    if tls is not None and tls.pair is not None:
        return tls.pair.ca
    try:  # FOGNODE_ONBOARDING=true on a node without TLS: the CA on disk, if any
        return (await asyncio.to_thread(load_certs, settings.ca_cert_file, "CA certificate"))[0]
    except CertError as exc:
        log.warning("no phone onboarding page: %s", exc)
        return None


def _why(exc: OSError, port: int) -> str:
    if exc.errno == errno.EACCES:
        return (
            f"port {port} needs the CAP_NET_BIND_SERVICE capability: `sudo .venv/bin/fognode "
            "service install` runs the node with it, or set FOGNODE_ONBOARDING_PORT=8080"
        )
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} is in use (another web server?): set FOGNODE_ONBOARDING_PORT to a "
            "free port"
        )
    return f"{exc.strerror or exc}: set FOGNODE_ONBOARDING_PORT to another port"


async def start_onboarding_page(
    settings: Settings, tls: TlsTerminator | None, guard: ConnectionGuard | None
) -> OnboardingSite | None:
    """Start the page, or say why not and return None. ``guard``: the API's, so
    the page counts against its caps; None (the supervisor of worker
    processes, which serves no API) gives the page a guard of its own, with at
    most ONBOARDING_CONNECTIONS connections."""
    ca = await _ca(settings, tls)
    if ca is None:
        return None
    links = onboarding_links(settings)
    options = OnboardingOptions(
        ca=export_forms(ca),
        url=links[0],
        bind=bind_host(settings.host),
        port=settings.onboarding_port,
        node_name=socket.gethostname(),
        other_urls=tuple(links[1:]),
    )
    quiet: dict[str, Any] = {} if settings.access_log else {"access_log": None}

    def runner(app: web.Application) -> web.AppRunner:
        own = (
            ConnectionLimits(
                ONBOARDING_CONNECTIONS,
                settings.max_connections_per_client,
                settings.client_first_byte_timeout,
            )
            if guard is None
            else None
        )
        return GuardedAppRunner(
            app,
            header_timeout=settings.header_timeout,
            guard=guard,
            limits=own,
            keepalive_timeout=settings.keepalive_timeout,
            shutdown_timeout=1.0,  # every answer is small and precomputed
            **quiet,
        )

    def site(runner: web.AppRunner, host: str | None, port: int) -> web.BaseSite:
        assert isinstance(runner, GuardedAppRunner)
        return runner.site(host, port, reuse_address=True)

    try:
        page = await start_onboarding(options, make_runner=runner, make_site=site)
    except OSError as exc:
        log.info(
            "no phone onboarding page: %s (FOGNODE_ONBOARDING=false turns it off). "
            "`fognode certs export` writes the CA files to carry over by hand.",
            _why(exc, settings.onboarding_port),
        )
        return None
    log.info(
        "phone onboarding page at %s (plain HTTP; it hands out the CA certificate, never a key)",
        page.url,
    )
    return page
