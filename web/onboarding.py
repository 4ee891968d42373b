"""Phone onboarding: a plain-HTTP page that gets a phone to trust the node's CA.

A phone cannot open the node's HTTPS pages before it trusts the CA, so this
page has a port of its own without TLS. That is safe because everything on
it is public: the CA certificate (never a key), its fingerprint, and
instructions. The page shows a QR code for the phone's camera; the link in
it hands an iPhone or iPad the configuration profile and any other phone
the certificate. The fingerprint on the page is what the person compares
with the one the phone shows, which is what turns "some certificate from
the LAN" into "this node's CA" (someone on the LAN could answer in the
node's place over plain HTTP; the comparison catches that).

Hardening: GET and HEAD only, nothing read from the request but the path
and the User-Agent (to pick the file), every answer precomputed at start (so
nothing is worth rate-limiting), strict security headers, tiny bodies only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markupsafe import Markup

from .qr import qr_svg, qr_text
from .security import page_headers

HERE = Path(__file__).parent
# The link in the QR code: one URL for every phone (see `phone_file`).
PHONE_PATH = "/ca"
FILE_STEM = "fognode-ca"


class CaForms(Protocol):
    """The CA as certs/ exports it (certs.export.CaExport has this shape)."""

    @property
    def pem(self) -> bytes: ...
    @property
    def der(self) -> bytes: ...
    @property
    def mobileconfig(self) -> bytes: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class OnboardingOptions:
    ca: CaForms
    # What phones open: `onboarding_urls()` chooses it (scheme, address, port).
    url: str
    # Where to listen, as asyncio takes it: an address, or None for every interface.
    bind: str | None = None
    port: int = 80
    node_name: str = "fognode"
    # Other addresses of the node, shown in case the phone cannot reach `url`.
    other_urls: tuple[str, ...] = ()


def _rank(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """Home and clinic LANs are 192.168/16 or 10/8; 172.16/12 is where Docker
    puts its bridges, so it comes after them; a public IPv4 (a server) next;
    IPv6 last (phones reach it, but people read and type IPv4)."""
    if ip.version == 4:
        for rank, net in enumerate(("192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12")):
            if ip in ipaddress.ip_network(net):
                return rank
        return 3 if ip.is_private else 4
    return 5 if ip.is_global else 6


def lan_candidates(addresses: Iterable[object]) -> list[str]:
    """Addresses a phone on the LAN could reach, most likely first."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for raw in addresses:
        try:
            ip = ipaddress.ip_address(str(raw).split("%")[0])
        except ValueError:
            continue
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            continue
        if ip not in found:
            found.append(ip)
    return [str(ip) for ip in sorted(found, key=_rank)]


def _url(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}" if port == 80 else f"http://{host}:{port}"


def onboarding_urls(
    *,
    port: int,
    addresses: Iterable[object],
    bound: str | None = None,
    public_url: str | None = None,
) -> list[str]:
    """The URLs phones can use for the page, the one to put in the QR code first.

    An operator-given URL wins (a DNS name, a port mapped by a router or
    compose). A page listening on one address (``bound``) answers there
    only. A page on every interface (``bound`` None) is reachable at this
    machine's LAN ``addresses``, ordered by `_rank`; with none of those,
    loopback (the page then works on this machine alone).
    """
    urls = [public_url.rstrip("/")] if public_url else []
    if bound is not None:
        urls.append(_url(bound, port))
    else:
        urls += [_url(a, port) for a in lan_candidates(addresses)] or [_url("127.0.0.1", port)]
    return list(dict.fromkeys(urls))


def phone_link(url: str) -> str:
    """The link in the QR code."""
    return url.rstrip("/") + PHONE_PATH


def terminal_text(url: str, ca: CaForms) -> str:
    """`fognode certs qr`: the page's QR code, link and fingerprint for a terminal."""
    link = phone_link(url)
    lines = "\n".join(f"  {line}" for line in _grouped(ca.fingerprint))
    return (
        f"{qr_text(link)}\n"
        f"Scan with the phone's camera, or open {link}\n"
        f"(the onboarding page at {url} has the steps for iOS and Android).\n\n"
        f"The phone must show this SHA-256 fingerprint for {ca.name}:\n{lines}\n"
    )


def _grouped(fingerprint: str, per_line: int = 8) -> list[str]:
    pairs = fingerprint.split(":")
    return [" ".join(pairs[i : i + per_line]) for i in range(0, len(pairs), per_line)]


@dataclass(frozen=True)
class _Download:
    body: bytes
    content_type: str
    what: str


@dataclass(frozen=True)
class _Prepared:
    """Everything the page serves, computed once at start."""

    context: dict[str, object]
    downloads: dict[str, _Download] = field(default_factory=dict)


PREPARED = web.AppKey("fognode.web.onboarding", _Prepared)

SECURITY_HEADERS = page_headers(scripts=False)


def create_onboarding_app(options: OnboardingOptions) -> web.Application:
    # GET only: nothing is read from a body, so accept none.
    app = web.Application(client_max_size=1024)
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True)
    ca = options.ca
    downloads = {
        f"/{FILE_STEM}.crt": _Download(ca.pem, "application/x-x509-ca-cert", "PEM"),
        f"/{FILE_STEM}.cer": _Download(ca.der, "application/pkix-cert", "DER"),
        f"/{FILE_STEM}.mobileconfig": _Download(
            ca.mobileconfig, "application/x-apple-aspen-config", "profile"
        ),
    }
    link = phone_link(options.url)
    app[PREPARED] = _Prepared(
        context={
            "node_name": options.node_name,
            "ca_name": ca.name,
            "fingerprint": ca.fingerprint,
            "fingerprint_lines": _grouped(ca.fingerprint),
            "link": link,
            "qr_svg": Markup(qr_svg(link, title=f"QR code: {link}")),
            "other_urls": [u for u in options.other_urls if u != options.url],
            "files": {
                "crt": f"{FILE_STEM}.crt",
                "cer": f"{FILE_STEM}.cer",
                "mobileconfig": f"{FILE_STEM}.mobileconfig",
            },
        },
        downloads=downloads,
    )
    app.router.add_get("/", _page)
    app.router.add_get(PHONE_PATH, phone_file)
    app.router.add_get("/onboarding.css", _stylesheet)
    for path in downloads:
        app.router.add_get(path, _download)
    app.on_response_prepare.append(_security_headers)
    return app


@aiohttp_jinja2.template("onboarding.html")
async def _page(request: web.Request) -> dict[str, object]:
    return request.app[PREPARED].context


def is_apple_device(user_agent: str) -> bool:
    """iPhone, iPad (iPadOS Safari says "Macintosh") and Macs take profiles."""
    return any(word in user_agent for word in ("iPhone", "iPad", "iPod", "Macintosh"))


async def phone_file(request: web.Request) -> web.Response:
    """The QR code's link: the profile for Apple devices, the certificate for others.

    A redirect rather than the file itself, so the phone saves it under its
    real name and the operator can see in the URL what was handed out.
    """
    kind = "mobileconfig" if is_apple_device(request.headers.get("User-Agent", "")) else "crt"
    raise web.HTTPFound(
        f"/{FILE_STEM}.{kind}",
        headers={"Vary": "User-Agent", "Cache-Control": "no-store"},
    )


async def _download(request: web.Request) -> web.Response:
    item = request.app[PREPARED].downloads[request.path]
    return web.Response(
        body=item.body,
        content_type=item.content_type,
        headers={
            "Content-Disposition": f'attachment; filename="{request.path.lstrip("/")}"',
            "Cache-Control": "no-cache",
        },
    )


async def _stylesheet(request: web.Request) -> web.FileResponse:
    return web.FileResponse(HERE / "static" / "onboarding.css")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


@dataclass
class OnboardingSite:
    runner: web.AppRunner
    url: str  # what phones open
    port: int  # the port actually bound

    async def stop(self) -> None:
        await self.runner.cleanup()


RunnerFactory = Callable[[web.Application], web.AppRunner]
SiteFactory = Callable[[web.AppRunner, str | None, int], web.BaseSite]


async def start_onboarding(
    options: OnboardingOptions,
    *,
    make_runner: RunnerFactory = web.AppRunner,
    make_site: SiteFactory = web.TCPSite,
) -> OnboardingSite:
    """Serve the page on its own port until `stop()`.

    `make_runner` and `make_site` let the gateway put this port behind the
    same connection guard (caps, slow-client deadlines) as its own.
    """
    runner = make_runner(create_onboarding_app(options))
    await runner.setup()
    site = make_site(runner, options.bind, options.port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = int(runner.addresses[0][1]) if runner.addresses else options.port
    return OnboardingSite(runner, options.url, port)
