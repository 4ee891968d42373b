"""Take the README's screenshots of the status and onboarding pages.

    .venv/bin/python -m tests.take_screenshots [--out docs/screenshots]

A real gateway (TLS, API keys) in front of two upstreams, the Ollama
stand-in and one that is down, with some traffic: a stream in progress, a
few finished requests, a missing model, and a pull under way from the page.
Chromium signs in and photographs the status page at desktop and phone
widths; then the onboarding page. The machine's host name is shown as
"clinic-nuc" and the links are LAN addresses an operator would see (the
servers themselves listen on loopback only), so the pictures do not show
this build machine's details.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import tempfile
from pathlib import Path

import aiohttp
from playwright.async_api import Page

from fognode.auth.api_keys import entry_for, new_key
from fognode.certs.authority import load_ca
from fognode.certs.export import export_forms
from fognode.gateway.config.settings import Settings
from fognode.gateway.node.server import RunningServer, start_server
from fognode.web.onboarding import OnboardingOptions, start_onboarding
from tests.support.browser import chromium
from tests.support.helpers import CHAT, STREAMED_CHAT, free_port
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import make_pki

HOST_NAME = "clinic-nuc"


async def traffic(node: RunningServer, http: aiohttp.ClientSession, key: str) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    url = f"{node.url}/v1/chat/completions"
    for _ in range(12):
        async with http.post(url, json=CHAT, headers=auth) as resp:
            await resp.read()
    async with http.post(url, json={**CHAT, "model": "llama3.1:70b"}, headers=auth) as resp:
        await resp.read()
    async with http.get(f"{node.url}/v1/models", headers={"Authorization": "Bearer fnk_x"}) as r:
        await r.read()


async def photograph_status(page: Page, node: RunningServer, key: str, out: Path) -> None:
    await page.goto(f"{node.url}/signin")
    await page.fill("#credential", key)
    await page.click("#signin-form button")
    await page.wait_for_url(f"{node.url}/")
    await page.fill("#pull-model", "gemma3:1b")
    await page.click("#pull-button")
    await page.wait_for_function(
        "() => { const v = document.querySelector('#pull-bar').value; return v > 30 && v < 70; }"
    )
    await page.wait_for_function(
        "() => document.querySelector('#active-streams').textContent.trim() === '1'"
    )
    await page.locator(".usage-row").first.wait_for()  # the usage store's first batch
    await page.screenshot(path=str(out), full_page=True)


async def main(out: Path) -> None:
    socket.gethostname = lambda: HOST_NAME  # what the pages call the node
    tmp = Path(tempfile.mkdtemp(prefix="fognode-shots-"))
    pki = make_pki(tmp / "certs", common_name=f"fognode CA ({HOST_NAME})")
    standin = OllamaStandIn(pull_pace=0.4)
    await standin.start()
    admin, user = new_key(), new_key()
    node = await start_server(
        Settings(
            host="127.0.0.1",
            port=0,
            upstream_urls=[standin.url, f"http://127.0.0.1:{free_port()}"],
            upstream_kind="ollama",
            certs_dir=pki.paths.directory,
            api_keys=[
                entry_for(admin, "operator", admin=True),
                entry_for(user, "ward-3", admin=False),
            ],
            mdns=False,
            node_id="4f1c9a7e2b6d8035",
            onboarding=True,
            onboarding_port=free_port(),
            onboarding_url="http://192.168.1.20",  # what the status page links to
            session_key_file=tmp / "session-key",
            usage_sqlite_path=tmp / "usage.sqlite3",
            status_refresh_seconds=0.5,
            shutdown_timeout=1,
        )
    )
    context = ssl.create_default_context(cafile=str(pki.ca))
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http,
            chromium(trust=pki.paths.server_cert) as browser,
        ):
            await traffic(node, http, user)
            standin.gate = asyncio.Queue()  # one phone's answer stays under way
            stream = asyncio.create_task(
                http.post(
                    f"{node.url}/v1/chat/completions",
                    json=STREAMED_CHAT,
                    headers={"Authorization": f"Bearer {user}"},
                )
            )
            for name, width in (("status.png", 1100), ("status-phone.png", 390)):
                page = await browser.new_page(viewport={"width": width, "height": 800})
                await photograph_status(page, node, admin, out / name)
                await page.close()
            for _ in range(100):
                standin.gate.put_nowait(None)
            (await stream).release()
            # The onboarding page as on a node serving the LAN (this one listens on
            # loopback only): the same page code, with a LAN address beside the link.
            port = free_port()
            onboarding = await start_onboarding(
                OnboardingOptions(
                    ca=export_forms(load_ca(pki.paths, None, need_key=False).cert),
                    url="http://192.168.1.20",
                    bind="127.0.0.1",
                    port=port,
                    node_name=HOST_NAME,
                    other_urls=("http://10.0.0.3",),
                )
            )
            try:
                for name, width in (("onboarding.png", 1000), ("onboarding-phone.png", 390)):
                    page = await browser.new_page(viewport={"width": width, "height": 800})
                    await page.goto(f"http://127.0.0.1:{port}/")
                    await page.screenshot(path=str(out / name), full_page=True)
                    await page.close()
            finally:
                await onboarding.stop()
    finally:
        await node.stop()
        await standin.stop()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshots"))
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(out))
