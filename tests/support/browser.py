"""Web pages in a real browser: Debian's Chromium driven by Playwright.

Playwright's own browser download cannot run here (and CI must not depend on
it), so Chromium comes from Debian (setup.sh) and is launched through
`executable_path`. The flags keep it off the network it would otherwise
call home to, and out of the sandbox, which needs user namespaces that a
root container does not give. Each test gets a fresh browser profile.

`decode_qr` reads QR codes from an image with zbar's `zbarimg`, a decoder
that shares nothing with the encoder (segno), as a phone's camera would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run ./setup.sh (it installs the test tools)")
    return path


def spki_sha256(cert_file: Path) -> str:
    """The base64 SHA-256 of a certificate's public key, as Chromium pins keys."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@asynccontextmanager
async def chromium(*, trust: Path | None = None) -> AsyncIterator[Browser]:
    """A headless Chromium; ``trust``: a server certificate (PEM) it accepts.

    A phone trusts the node once the node's CA is installed. Chromium reads
    its trust store from an NSS database; instead of building one, it is
    told to accept the server certificate's key
    (``--ignore-certificate-errors-spki-list``; the server presents only its
    leaf, so the leaf's key is the one to name). Every other certificate is
    still refused, and the page is a real HTTPS origin: Secure cookies are
    kept, the context is secure.
    """
    _need(CHROMIUM)
    args = list(CHROMIUM_ARGS)
    if trust is not None:
        args.append(f"--ignore-certificate-errors-spki-list={spki_sha256(trust)}")
    async with async_playwright() as playwright:
        # launch() gives every browser a new, empty profile directory.
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=args, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1000, "height": 900})
    page = await context.new_page()
    yield page
    await context.close()


async def decode_qr(image: Path) -> list[str]:
    """Every QR code zbarimg finds in the image, as text."""
    proc = await asyncio.create_subprocess_exec(
        _need("zbarimg"),
        "--quiet",
        "--raw",
        "-Sdisable",
        "-Sqrcode.enable",
        str(image),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    # zbarimg exits 4 when it finds no code: a decoding failure, not an error.
    assert proc.returncode in (0, 4), err.decode()
    return [line for line in out.decode().splitlines() if line]
