"""The status page, used as an operator uses it: in a real headless Chromium.

A TLS gateway with API keys in front of the Ollama stand-in. The browser
signs in with a wrong key and then the right one, watches live values change
while the stand-in streams, pulls a model and watches the progress reach
100%, and signs out. Around that: the session cookie's flags, CSRF refusals,
the sign-in slow-down, and that a session is good for the pages only, never
for the API.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from playwright.async_api import Browser, Page

from fognode.auth.api_keys import entry_for, new_key
from fognode.auth.throttle import FailureThrottle
from fognode.certs.inspect import fingerprint
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pages.sessions import SESSION_COOKIE, SESSIONS, ThrottleHere
from tests.browser import chromium
from tests.conftest import GatewayFactory
from tests.helpers import CHAT, STREAMED_CHAT
from tests.ollama_standin import OllamaStandIn
from tests.pki import Pki, make_pki

ADMIN_KEY, USER_KEY = new_key(), new_key()
LIFETIME = 900.0


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "node")


@pytest.fixture
async def node(standin: OllamaStandIn, make_gateway: GatewayFactory, pki: Pki) -> RunningServer:
    standin.pull_pace = 0.05  # Ollama reports a pull every 60 ms
    return await make_gateway(
        standin.url,
        tls=True,
        certs_dir=pki.paths.directory,
        auth="firebase",
        api_keys=[
            entry_for(ADMIN_KEY, "operator", admin=True),
            entry_for(USER_KEY, "phone", admin=False),
        ],
        status_refresh_seconds=0.3,
        session_lifetime=LIFETIME,
    )


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


@pytest.fixture
async def https(pki: Pki) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that trusts the node's CA and keeps cookies (also for 127.0.0.1)."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context),
        cookie_jar=aiohttp.CookieJar(unsafe=True),
    ) as session:
        yield session


async def sign_in_form(http: aiohttp.ClientSession, url: str) -> str:
    """Open the sign-in form (its cookie goes in the jar); return its CSRF token."""
    async with http.get(f"{url}/signin") as resp:
        assert resp.status == 200
        found = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
    assert found is not None
    return found.group(1)


async def sign_in(http: aiohttp.ClientSession, url: str, credential: str) -> aiohttp.ClientResponse:
    token = await sign_in_form(http, url)
    return await http.post(
        f"{url}/signin",
        data={"csrf": token, "credential": credential},
        allow_redirects=False,
    )


async def csrf_of_page(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/", allow_redirects=False) as resp:
        assert resp.status == 200
        found = re.search(r'name="csrf-token" content="([^"]+)"', await resp.text())
    assert found is not None
    return found.group(1)


def text_is(selector: str, value: str) -> str:
    return f"() => document.querySelector({selector!r})?.textContent.trim() === {value!r}"


def failures(node: RunningServer) -> FailureThrottle:
    """The sign-in throttle of a node that is one process (it holds it)."""
    held = node.app[SESSIONS].throttle
    assert isinstance(held, ThrottleHere)
    return held.failures


async def test_an_operator_signs_in_watches_pulls_and_signs_out(
    node: RunningServer,
    standin: OllamaStandIn,
    page: Page,
    pki: Pki,
    https: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    throttle = failures(node)

    # Not signed in: the page sends the browser to the sign-in form.
    await page.goto(f"{node.url}/")
    assert page.url == f"{node.url}/signin"

    # A wrong key: refused, said so, still on the form.
    await page.fill("#credential", new_key())
    async with page.expect_response(f"{node.url}/signin") as answer:
        await page.click("#signin-form button")
    assert (await answer.value).status == 401
    assert "not known" in await page.locator("#signin-error").inner_text()

    # Right after a failure even the right key is not looked at: slowed down.
    await page.fill("#credential", ADMIN_KEY)
    async with page.expect_response(f"{node.url}/signin") as answer:
        await page.click("#signin-form button")
    refused = await answer.value
    assert refused.status == 429 and int(await refused.header_value("Retry-After") or 0) >= 1
    assert "Too many failed sign-ins" in await page.locator("#signin-error").inner_text()

    # Once the wait is over, the right key signs in.
    while throttle.retry_after("127.0.0.1") > 0:  # noqa: ASYNC110 (a clock, no event)
        await asyncio.sleep(0.05)
    await page.fill("#credential", ADMIN_KEY)
    await page.click("#signin-form button")
    await page.wait_for_url(f"{node.url}/")
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
            f"{node.url}/v1/chat/completions", json=STREAMED_CHAT, headers=auth
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
    async with https.post(f"{node.url}/v1/chat/completions", json=missing, headers=auth) as r:
        assert r.status == 404
        request_id = r.headers["X-Request-ID"]
    row = page.locator(".error-row", has_text=request_id)
    await row.wait_for()
    assert "404" in await row.inner_text() and "no-such-model" in await row.inner_text()
    assert USER_KEY not in await page.content()

    # The day's usage per user, from the usage store (written in batches, so it
    # appears within a flush and a refresh): the streamed chat and the 404 (it
    # reached the upstream), the chat's tokens counted.
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
    await page.wait_for_url(f"{node.url}/signin")
    await page.goto(f"{node.url}/")
    assert page.url == f"{node.url}/signin"
    https.cookie_jar.update_cookies({SESSION_COOKIE: session["value"]})
    async with https.get(f"{node.url}/", allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/signin"


async def test_every_change_needs_the_csrf_token(
    node: RunningServer, https: aiohttp.ClientSession, standin: OllamaStandIn
) -> None:
    async with await sign_in(https, node.url, ADMIN_KEY) as resp:
        assert resp.status == 303
    token = await csrf_of_page(https, node.url)

    # The pull form without its token, with another's, with the right one.
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        async with https.post(
            f"{node.url}/status/pull", data={"model": "tinyllama"}, headers=headers
        ) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "csrf_failed"
    assert not [r for r in standin.requests if r.path == "/api/pull"]

    # Sign-out too: without the token it is refused, and the session lives on.
    async with https.post(f"{node.url}/signout", data={}, allow_redirects=False) as resp:
        assert resp.status == 403
    async with https.get(f"{node.url}/status/live", allow_redirects=False) as resp:
        assert resp.status == 200

    # A sign-in form posted without the form's own cookie (as from another site's
    # page: SameSite=Strict keeps the browser from sending it along).
    form_token = await sign_in_form(https, node.url)
    https.cookie_jar.clear(lambda c: c.key != SESSION_COOKIE)
    async with https.post(
        f"{node.url}/signin",
        data={"csrf": form_token, "credential": ADMIN_KEY},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 403
        assert "expired or came from another page" in await resp.text()

    # With the token the same requests work.
    async with https.post(
        f"{node.url}/status/pull", data={"model": "tinyllama"}, headers={"X-CSRF-Token": token}
    ) as resp:
        assert resp.status == 200
        assert b'"success"' in await resp.read()
    async with https.post(
        f"{node.url}/signout", data={"csrf": token}, allow_redirects=False
    ) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/signin"


async def test_a_session_opens_the_pages_and_never_the_api(
    node: RunningServer, https: aiohttp.ClientSession
) -> None:
    async with await sign_in(https, node.url, ADMIN_KEY) as resp:
        assert resp.status == 303
    async with https.get(f"{node.url}/status/live") as resp:
        assert resp.status == 200
    # The same browser, the same cookie, on the API: not admitted.
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/api/pull")):
        async with https.request(method, f"{node.url}{path}", json={"model": "x"}) as resp:
            assert resp.status == 401, path
            assert (await resp.json())["error"]["code"] == "missing_token"
    # A script with the admin key reads the page as before; a user key may not.
    async with aiohttp.ClientSession(connector=https.connector, connector_owner=False) as script:
        bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with script.get(f"{node.url}/status/live", headers=bearer) as resp:
            assert resp.status == 200
        bearer = {"Authorization": f"Bearer {USER_KEY}"}
        async with script.get(f"{node.url}/status/live", headers=bearer) as resp:
            assert resp.status == 403
    # A user key does not sign in.
    async with (
        aiohttp.ClientSession(
            connector=https.connector,
            connector_owner=False,
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        ) as other,
        await sign_in(other, node.url, USER_KEY) as resp,
    ):
        assert resp.status == 403
        assert "admin" in (await resp.text()).lower()


async def test_guessing_at_the_sign_in_form_is_slowed_down(
    node: RunningServer, https: aiohttp.ClientSession
) -> None:
    throttle = failures(node)
    async with await sign_in(https, node.url, new_key()) as resp:
        assert resp.status == 401
    waits = []
    for _ in range(3):
        async with await sign_in(https, node.url, ADMIN_KEY) as resp:
            assert resp.status == 429
            waits.append(int(resp.headers["Retry-After"]))
    assert all(w >= 1 for w in waits)
    # Refused attempts are not checked, so they do not lengthen the wait.
    assert throttle.retry_after("127.0.0.1") <= throttle.first_delay
    assert len(throttle) == 1
