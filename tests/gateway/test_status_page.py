"""The status page, used as an operator uses it: in a real headless Chromium.

A TLS gateway with API keys in front of the Ollama stand-in. The browser
signs in with a wrong key and then the right one, watches live values change
while the stand-in streams, pulls a model and watches the progress reach
100%, and signs out. Around that: the session cookie's flags, CSRF refusals,
the sign-in slow-down, and that a session is good for the pages only, never
for the API.
"""

from __future__ import annotations

import re

import aiohttp
from yarl import URL

from fognode.auth.api_keys import ApiKeyEntry, entry_for, new_key
from fognode.gateway.node.server import RunningServer
from fognode.gateway.pages.sessions import SESSION_COOKIE
from fognode.gateway.pipeline.access import AUTHORIZER
from tests.support.ollama_standin import OllamaStandIn
from tests.support.status_page import ADMIN_KEY, SCOPED_ADMIN_KEY, USER_KEY, failures


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


async def test_every_change_needs_the_csrf_token(
    status_gateway: RunningServer, https: aiohttp.ClientSession, standin: OllamaStandIn
) -> None:
    async with await sign_in(https, status_gateway.url, ADMIN_KEY) as resp:
        assert resp.status == 303
    token = await csrf_of_page(https, status_gateway.url)

    # The pull form without its token, with another's, with the right one.
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        async with https.post(
            f"{status_gateway.url}/status/pull", data={"model": "tinyllama"}, headers=headers
        ) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "csrf_failed"
    assert not [r for r in standin.requests if r.path == "/api/pull"]

    # Sign-out too: without the token it is refused, and the session lives on.
    async with https.post(f"{status_gateway.url}/signout", data={}, allow_redirects=False) as resp:
        assert resp.status == 403
    async with https.get(f"{status_gateway.url}/status/live", allow_redirects=False) as resp:
        assert resp.status == 200

    # A sign-in form posted without the form's own cookie (as from another site's
    # page: SameSite=Strict keeps the browser from sending it along).
    form_token = await sign_in_form(https, status_gateway.url)
    https.cookie_jar.clear(lambda c: c.key != SESSION_COOKIE)
    async with https.post(
        f"{status_gateway.url}/signin",
        data={"csrf": form_token, "credential": ADMIN_KEY},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 403
        assert "expired or came from another page" in await resp.text()

    # With the token the same requests work.
    async with https.post(
        f"{status_gateway.url}/status/pull",
        data={"model": "tinyllama"},
        headers={"X-CSRF-Token": token},
    ) as resp:
        assert resp.status == 200
        assert b'"success"' in await resp.read()
    async with https.post(
        f"{status_gateway.url}/signout", data={"csrf": token}, allow_redirects=False
    ) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/signin"


async def test_a_session_opens_the_pages_and_never_the_api(
    status_gateway: RunningServer, https: aiohttp.ClientSession
) -> None:
    async with await sign_in(https, status_gateway.url, ADMIN_KEY) as resp:
        assert resp.status == 303
    async with https.get(f"{status_gateway.url}/status/live") as resp:
        assert resp.status == 200
    # The same browser, the same cookie, on the API: not admitted.
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/api/pull")):
        async with https.request(
            method, f"{status_gateway.url}{path}", json={"model": "x"}
        ) as resp:
            assert resp.status == 401, path
            assert (await resp.json())["error"]["code"] == "missing_token"
    # A script with the admin key reads the page as before; a user key may not.
    async with aiohttp.ClientSession(connector=https.connector, connector_owner=False) as script:
        bearer = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with script.get(f"{status_gateway.url}/status/live", headers=bearer) as resp:
            assert resp.status == 200
        bearer = {"Authorization": f"Bearer {USER_KEY}"}
        async with script.get(f"{status_gateway.url}/status/live", headers=bearer) as resp:
            assert resp.status == 403
    # A user key does not sign in.
    async with (
        aiohttp.ClientSession(
            connector=https.connector,
            connector_owner=False,
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        ) as other,
        await sign_in(other, status_gateway.url, USER_KEY) as resp,
    ):
        assert resp.status == 403
        assert "admin" in (await resp.text()).lower()


async def test_guessing_at_the_sign_in_form_is_slowed_down(
    status_gateway: RunningServer, https: aiohttp.ClientSession
) -> None:
    throttle = failures(status_gateway)
    async with await sign_in(https, status_gateway.url, new_key()) as resp:
        assert resp.status == 401
    waits = []
    for _ in range(3):
        async with await sign_in(https, status_gateway.url, ADMIN_KEY) as resp:
            assert resp.status == 429
            waits.append(int(resp.headers["Retry-After"]))
    assert all(w >= 1 for w in waits)
    # Refused attempts are not checked, so they do not lengthen the wait.
    assert throttle.retry_after("127.0.0.1") <= throttle.first_delay
    assert len(throttle) == 1


async def test_a_key_kept_to_some_models_does_not_sign_in(
    status_gateway: RunningServer, https: aiohttp.ClientSession
) -> None:
    """The page pulls models for everyone, beyond a key made with --models."""
    async with await sign_in(https, status_gateway.url, SCOPED_ADMIN_KEY) as resp:
        assert resp.status == 403 and "without --models" in await resp.text()
        assert SESSION_COOKIE not in resp.cookies
    async with https.get(f"{status_gateway.url}/", allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/signin"


async def test_a_session_ends_with_the_key_it_was_made_with(
    status_gateway: RunningServer, https: aiohttp.ClientSession
) -> None:
    """A revoked (or expired, or demoted) key's kept cookie opens no page: the
    session lasts only as long as its key would sign in now."""
    async with await sign_in(https, status_gateway.url, ADMIN_KEY) as resp:
        assert resp.status == 303
    async with https.get(f"{status_gateway.url}/status/live", allow_redirects=False) as resp:
        assert resp.status == 200
    authorizer = status_gateway.app[AUTHORIZER]
    # The operator revokes the key (the key file's reload hands every worker this set).
    authorizer.use_keys([ApiKeyEntry.parse(entry_for(USER_KEY, "phone", admin=False))])
    async with https.get(f"{status_gateway.url}/status/live", allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/signin"
    token = https.cookie_jar.filter_cookies(URL(status_gateway.url)).get(SESSION_COOKIE)
    assert token is not None  # the browser keeps the cookie; it opens nothing
    async with https.post(f"{status_gateway.url}/status/pull", data={"model": "m"}) as resp:
        assert resp.status == 401
    # Made again under the same name, the old session stays ended.
    authorizer.use_keys([ApiKeyEntry.parse(entry_for(ADMIN_KEY, "operator", admin=True))])
    async with https.get(f"{status_gateway.url}/", allow_redirects=False) as resp:
        assert resp.status == 303
    # A new sign-in with a key that is an administrator's again works as before.
    async with await sign_in(https, status_gateway.url, ADMIN_KEY) as resp:
        assert resp.status == 303
    async with https.get(f"{status_gateway.url}/", allow_redirects=False) as resp:
        assert resp.status == 200
    # A key demoted to a user's ends its session too.
    authorizer.use_keys([ApiKeyEntry.parse(entry_for(ADMIN_KEY, "operator", admin=False))])
    async with https.get(f"{status_gateway.url}/", allow_redirects=False) as resp:
        assert resp.status == 303
