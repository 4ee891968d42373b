"""The status page as an operator uses it, in a real headless Chromium: signs in,
watches, pulls a model, signs out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from playwright.async_api import Browser, Page

from fognode.auth.api_keys import new_key
from fognode.certs.inspect import fingerprint
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pages.sessions import SESSION_COOKIE
from tests.support.browser import chromium
from tests.support.helpers import CHAT, STREAMED_CHAT
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import Pki
from tests.support.status_page import ADMIN_KEY, LIFETIME, USER_KEY, failures


@pytest.fixture
async def trusting_browser(pki: Pki) -> AsyncIterator[Browser]:
    async with chromium(trust=pki.paths.server_cert) as launched:
        yield launched


@pytest.fixture
async def page(trusting_browser: Browser) -> AsyncIterator[Page]:  # type: ignore[override]
    # A phone-sized window: the page is meant to be read on one.
    context = await trusting_browser.new_context(viewport={"width": 420, "height": 900})
    yield await context.new_page()
    await context.close()


def text_is(selector: str, value: str) -> str:
    return f"() => document.querySelector({selector!r})?.textContent.trim() === {value!r}"


async def test_an_operator_signs_in_watches_pulls_and_signs_out(
    status_gateway: RunningServer,
    standin: OllamaStandIn,
    page: Page,
    pki: Pki,
    https: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    throttle = failures(status_gateway)

    # Not signed in: the page sends the browser to the sign-in form.
    await page.goto(f"{status_gateway.url}/")
    assert page.url == f"{status_gateway.url}/signin"

    # A wrong key: refused, said so, still on the form.
    await page.fill("#credential", new_key())
    async with page.expect_response(f"{status_gateway.url}/signin") as answer:
        await page.click("#signin-form button")
    assert (await answer.value).status == 401
    assert "not known" in await page.locator("#signin-error").inner_text()

    # Right after a failure even the right key is not looked at: slowed down.
    await page.fill("#credential", ADMIN_KEY)
    async with page.expect_response(f"{status_gateway.url}/signin") as answer:
        await page.click("#signin-form button")
    refused = await answer.value
    assert refused.status == 429 and int(await refused.header_value("Retry-After") or 0) >= 1
    assert "Too many failed sign-ins" in await page.locator("#signin-error").inner_text()

    # Once the wait is over, the right key signs in.
    while throttle.retry_after("127.0.0.1") > 0:  # noqa: ASYNC110 (a clock, no event)
        await asyncio.sleep(0.05)
    await page.fill("#credential", ADMIN_KEY)
    await page.click("#signin-form button")
    await page.wait_for_url(f"{status_gateway.url}/")
    assert await page.locator("#viewer").inner_text() == "apikey:operator"

    # The session cookie: HttpOnly, Secure, SameSite=Strict, short-lived.
    cookies = {c["name"]: c for c in await page.context.cookies()}
    session = cookies[SESSION_COOKIE]
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
    assert session["path"] == "/" and "domain" in session
    assert time.time() < session["expires"] <= time.time() + LIFETIME + 5

    # What the page says about the node.
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    assert await page.locator("#ca-fingerprint").inner_text() == fingerprint(ca)
    assert "spezillmfog.local" in await page.locator("#cert-names").inner_text()
    assert "127.0.0.1, port" in await page.locator("#listening").inner_text()
    upstream = page.locator(f'.upstream[data-url="{standin.url}"]')
    for name in standin.models:
        assert await upstream.locator(f'li.model[data-name="{name}"]').count() == 1
    assert await page.locator("#active-streams").inner_text() == "0"

    # Live values change while a phone streams, without a reload.
    standin.gate = asyncio.Queue()
    auth = {"Authorization": f"Bearer {USER_KEY}"}

    async def chat() -> bytes:
        async with https.post(
            f"{status_gateway.url}/v1/chat/completions", json=STREAMED_CHAT, headers=auth
        ) as r:
            assert r.status == 200
            return await r.read()

    streaming = asyncio.create_task(chat())
    await page.wait_for_function(text_is("#active-streams", "1"))
    await page.wait_for_function(text_is("#in-flight", "1"))
    for _ in range(200):
        standin.gate.put_nowait(None)
    assert b"data: [DONE]" in await streaming
    await page.wait_for_function(text_is("#active-streams", "0"))
    await page.wait_for_function(
        "() => Number(document.querySelector('#requests-total').textContent) >= 1"
    )

    # An error shows with its request id (and never the key that made it).
    missing = {**CHAT, "model": "no-such-model:1b"}
    async with https.post(
        f"{status_gateway.url}/v1/chat/completions", json=missing, headers=auth
    ) as r:
        assert r.status == 404
        request_id = r.headers["X-Request-ID"]
    row = page.locator(".error-row", has_text=request_id)
    await row.wait_for()
    assert "404" in await row.inner_text() and "no-such-model" in await row.inner_text()
    assert USER_KEY not in await page.content()

    # The day's usage per user, from the usage store (written in batches, so it
    # appears within a flush and a refresh): the streamed chat and the 404 (the
    # model check's, recorded as model_not_found without tokens), the chat's tokens
    # counted.
    await page.wait_for_function(
        """() => [...document.querySelectorAll('.usage-row')].some(row => {
            const cells = [...row.querySelectorAll('td')].map(c => c.textContent.trim());
            return cells[0] === 'apikey:phone' && cells[1] === '2' && Number(cells[3]) > 0;
        })"""
    )
    await page.screenshot(path=str(tmp_path / "status.png"), full_page=True)

    # Pull a model and watch the progress reach 100%.
    await page.evaluate(
        """() => {
            window.seen = [];
            const bar = document.querySelector('#pull-bar');
            new MutationObserver(() => window.seen.push(bar.value))
                .observe(bar, {attributes: true});
        }"""
    )
    await page.fill("#pull-model", "tinyllama:latest")
    await page.click("#pull-button")
    await page.wait_for_function(text_is("#pull-status", "success"))
    assert await page.locator("#pull-bar").get_attribute("value") == "100"
    seen = await page.evaluate("window.seen")
    assert any(0 < v < 100 for v in seen), seen  # it moved, not just jumped to the end
    assert max(seen) == 100
    await upstream.locator('li.model[data-name="tinyllama:latest"]').wait_for()
    assert len([r for r in standin.forwarded if r.path == "/api/pull"]) == 1

    # Sign out: back at the form, and the old cookie is worth nothing.
    await page.click("#signout button")
    await page.wait_for_url(f"{status_gateway.url}/signin")
    await page.goto(f"{status_gateway.url}/")
    assert page.url == f"{status_gateway.url}/signin"
    https.cookie_jar.update_cookies({SESSION_COOKIE: session["value"]})
    async with https.get(f"{status_gateway.url}/", allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/signin"
