"""Phone onboarding: the plain-HTTP page with the QR code, and `fognode certs qr`.

The page is checked as a person uses it: opened in a real Chromium, its QR
code read from a screenshot by zbar (not by the library that drew it), the
link followed as an iPhone and as an Android phone would, and the
fingerprint on the page compared with what was downloaded; and as
`fognode serve` runs it: beside the API, behind the same connection guard,
and not a reason to stop serving when its port cannot be bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import plistlib
import socket
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from playwright.async_api import Page

from fognode.auth.api_keys import entry_for, new_key
from fognode.certs.export import CaExport
from fognode.certs.inspect import fingerprint
from fognode.web.onboarding import (
    OnboardingSite,
)
from tests.support.browser import decode_qr
from tests.support.helpers import free_port
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import Pki
from tests.support.processes import NodeProcess

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.0 Mobile/15E148 Safari/604.1"
)
ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36"
)


def sha256_colons(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


async def test_phone_onboarding_in_a_real_browser(
    onboarding: OnboardingSite, page: Page, ca_forms: CaExport, clinic_pki: Pki, tmp_path: Path
) -> None:
    ca = x509.load_pem_x509_certificate(clinic_pki.ca.read_bytes())
    response = await page.goto(onboarding.url)
    assert response is not None and response.status == 200
    assert await page.title() == "Trust Clinic fog node on your phone"

    # The QR code, read from pixels by an independent decoder.
    shot = tmp_path / "onboarding.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert await decode_qr(shot) == [f"{onboarding.url}/ca"]

    # The fingerprint a person reads off the page is the CA's.
    shown = await page.locator("#fingerprint").inner_text()
    assert shown.split() == fingerprint(ca).split(":")
    assert await page.locator("#ca-name").inner_text() == "fognode CA (clinic)"
    assert "http://[fd00::5]:8080" in await page.locator(".files").inner_text()

    # Follow the link as each phone would.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{onboarding.url}/ca", headers={"User-Agent": ANDROID}) as resp:
            assert resp.status == 200 and resp.url.path == "/fognode-ca.crt"
            assert resp.content_type == "application/x-x509-ca-cert"
            crt = x509.load_pem_x509_certificate(await resp.read())
        async with http.get(f"{onboarding.url}/ca", headers={"User-Agent": IPHONE}) as resp:
            assert resp.status == 200 and resp.url.path == "/fognode-ca.mobileconfig"
            assert resp.content_type == "application/x-apple-aspen-config"
            profile = plistlib.loads(await resp.read())
    der = crt.public_bytes(Encoding.DER)
    assert sha256_colons(der) == fingerprint(ca) == ca_forms.fingerprint
    assert profile["PayloadContent"][0]["PayloadContent"] == der
    assert profile["PayloadContent"][0]["PayloadType"] == "com.apple.security.root"

    # The page's own download links, clicked in the browser.
    async with page.expect_download() as download_info:
        await page.click("text=fognode-ca.cer")
    download = await download_info.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    assert saved.name == "fognode-ca.cer" and saved.read_bytes() == der


def _matrix_from_blocks(text: str) -> list[list[int]]:
    """Read segno's half-block drawing back into modules (1 = dark).

    A block is light, a blank dark; each character holds two rows.
    """
    top = {"█": 0, "▀": 0, "▄": 1, " ": 1}
    bottom = {"█": 0, "▀": 1, "▄": 0, " ": 1}
    rows: list[list[int]] = []
    for line in text.splitlines():
        if not line or any(ch not in top for ch in line):
            break
        rows.append([top[ch] for ch in line])
        rows.append([bottom[ch] for ch in line])
    return rows


def _write_pbm(rows: list[list[int]], path: Path, scale: int = 8) -> None:
    pixels = [[bit for bit in row for _ in range(scale)] for row in rows for _ in range(scale)]
    lines = [f"P1\n{len(pixels[0])} {len(pixels)}"]
    lines += [" ".join(map(str, row)) for row in pixels]
    path.write_text("\n".join(lines) + "\n")


async def certs_qr(pki: Pki, *flags: str, **env: str) -> tuple[str, str]:
    """`fognode certs qr` as its own process, with FOGNODE_* ``env``: its stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fognode.gateway.cli",
        "certs",
        "qr",
        "--dir",
        str(pki.paths.directory),
        *flags,
        env={**os.environ, **{f"FOGNODE_{k.upper()}": v for k, v in env.items()}},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    return out.decode(), err.decode()


async def test_certs_qr_prints_the_same_code_in_the_terminal(
    clinic_pki: Pki, tmp_path: Path
) -> None:
    ca = x509.load_pem_x509_certificate(clinic_pki.ca.read_bytes())
    printed, _ = await certs_qr(clinic_pki, "--url", "http://192.168.1.20:8080")
    rows = _matrix_from_blocks(printed)
    image = tmp_path / "terminal-qr.pbm"
    _write_pbm(rows, image)
    assert await decode_qr(image) == ["http://192.168.1.20:8080/ca"]
    assert "open http://192.168.1.20:8080/ca" in printed
    shown = [pair for line in printed.splitlines()[-4:] for pair in line.split()]
    assert shown == fingerprint(ca).split(":")


async def serving_node(workdir: Path, pki: Pki, upstream: str, port: int) -> NodeProcess:
    """`fognode serve` with TLS, an admin key and the onboarding page on ``port``."""
    node = NodeProcess(
        workdir,
        {
            "certs_dir": str(pki.paths.directory),
            "upstream_url": upstream,
            "api_keys": entry_for(new_key(), "operator", admin=True),
            "onboarding": "true",
            "onboarding_port": str(port),
        },
    )
    await node.start(ssl.create_default_context(cafile=str(pki.ca)))
    return node


async def test_fognode_serve_serves_the_page_phones_can_follow(
    standin: OllamaStandIn, clinic_pki: Pki, page: Page, tmp_path: Path
) -> None:
    port = free_port()
    node = await serving_node(tmp_path, clinic_pki, standin.url, port)
    try:
        url = f"http://127.0.0.1:{port}"
        assert f"phone onboarding page at {url}" in node.log()
        response = await page.goto(url)
        assert response is not None and response.status == 200

        # What the phone's camera reads, and what that link hands it.
        shot = tmp_path / "served.png"
        await page.screenshot(path=str(shot), full_page=True)
        [link] = await decode_qr(shot)
        assert link == f"{url}/ca"
        async with aiohttp.ClientSession() as http:
            async with http.get(link, headers={"User-Agent": ANDROID}) as resp:
                assert resp.status == 200
                crt = x509.load_pem_x509_certificate(await resp.read())
            async with http.get(link, headers={"User-Agent": IPHONE}) as resp:
                assert resp.url.path == "/fognode-ca.mobileconfig"
                profile = plistlib.loads(await resp.read())
        der = crt.public_bytes(Encoding.DER)
        ca = x509.load_pem_x509_certificate(clinic_pki.ca.read_bytes())
        shown = (await page.locator("#fingerprint").inner_text()).split()
        assert shown == sha256_colons(der).split(":") == fingerprint(ca).split(":")
        assert profile["PayloadContent"][0]["PayloadContent"] == der
    finally:
        await node.astop()
    # Stopped with the node.
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/"):
            pass


async def test_a_port_that_cannot_be_bound_is_explained_and_the_api_serves_on(
    standin: OllamaStandIn, clinic_pki: Pki, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = await serving_node(tmp_path, clinic_pki, standin.url, port)
        try:
            assert node.alive
            [line] = [ln for ln in node.log().splitlines() if "no phone onboarding page" in ln]
            assert "INFO" in line and f"port {port} is in use" in line
            assert "FOGNODE_ONBOARDING_PORT" in line and "FOGNODE_ONBOARDING=false" in line
        finally:
            await node.astop()


async def test_certs_qr_follows_the_onboarding_settings(clinic_pki: Pki) -> None:
    async def qr(**env: str) -> str:
        out, err = await certs_qr(clinic_pki, **env)
        return out + err

    # The page listens on one address: the link is that address and the page's port.
    printed = await qr(host="192.168.1.20", onboarding_port="8081")
    assert "open http://192.168.1.20:8081/ca" in printed
    # The operator's own URL wins.
    printed = await qr(onboarding_url="http://fog.lan:8000")
    assert "open http://fog.lan:8000/ca" in printed
    # Without TLS the node serves no page by default, and says so.
    printed = await qr(tls="false", host="10.0.0.3")
    assert "open http://10.0.0.3/ca" in printed and "FOGNODE_ONBOARDING=true" in printed
