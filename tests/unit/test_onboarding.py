"""Phone onboarding's own logic and page: which URL the QR code carries, and
the page served alone on loopback, safe to expose."""

from __future__ import annotations

import aiohttp

from fognode.web.onboarding import (
    OnboardingSite,
    onboarding_urls,
)
from tests.support.pki import Pki


def test_the_qr_url_prefers_the_lan_a_phone_is_on() -> None:
    lan = ["127.0.0.1", "172.17.0.1", "fe80::1%eth0", "10.0.0.3", "192.168.1.20", "fd00::5"]
    assert onboarding_urls(port=80, addresses=lan) == [
        "http://192.168.1.20",
        "http://10.0.0.3",
        "http://172.17.0.1",  # Docker's bridges live in 172.16/12
        "http://[fd00::5]",
    ]
    # A page bound to one address answers there only, loopback included.
    assert onboarding_urls(port=8080, addresses=lan, bound="10.0.0.3") == ["http://10.0.0.3:8080"]
    assert onboarding_urls(port=8080, addresses=lan, bound="127.0.0.1") == ["http://127.0.0.1:8080"]
    # The operator's own URL (a DNS name, a forwarded port) wins.
    assert onboarding_urls(port=8080, addresses=lan, public_url="http://fog.lan/")[0] == (
        "http://fog.lan"
    )
    # No LAN address at all: the page still works on this machine.
    assert onboarding_urls(port=8080, addresses=["127.0.0.1", "::1"]) == ["http://127.0.0.1:8080"]


async def test_the_page_is_safe_to_expose(onboarding: OnboardingSite, clinic_pki: Pki) -> None:
    async with aiohttp.ClientSession() as http:
        bodies = []
        for path in ("/", "/ca", "/fognode-ca.crt", "/fognode-ca.cer", "/fognode-ca.mobileconfig"):
            async with http.get(onboarding.url + path) as resp:
                assert resp.status == 200, path
                assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert resp.headers["Referrer-Policy"] == "no-referrer"
                bodies.append(await resp.read())
        # Nothing private: no key in any form, encrypted or not.
        key = clinic_pki.root.ca_key.read_bytes()
        for body in bodies:
            assert b"PRIVATE KEY" not in body and key not in body
        # GET only; unknown paths and files next to the certificates are not served.
        for method in ("POST", "PUT", "DELETE"):
            async with http.request(method, onboarding.url + "/", data=b"x") as resp:
                assert resp.status == 405
                assert resp.headers["X-Frame-Options"] == "DENY"
        for path in ("/ca.key", "/../ca.key", "/static/../onboarding.py", "/fognode-ca.key"):
            async with http.get(onboarding.url + path) as resp:
                assert resp.status == 404, path
        async with http.head(onboarding.url + "/") as resp:
            assert resp.status == 200
