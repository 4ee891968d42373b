"""The gateway level: the whole gateway in the test's process, in front of the
Ollama stand-in or another in-process fake, driven over loopback sockets.

No process is started, no browser, emulator or PostgreSQL is needed.
"""

from __future__ import annotations

from tests.support.fog import fog_pki
from tests.support.gateway import gateway, http, make_gateway, standin, unconfigured
from tests.support.onboarding import clinic_pki
from tests.support.pki import pki
from tests.support.status_page import https, status_gateway
from tests.support.tls import expired_gateway, rogue_pki, tls_gateway
from tests.support.tokens import key_set, signing_key, stranger_key

__all__ = [
    "clinic_pki",
    "expired_gateway",
    "fog_pki",
    "gateway",
    "http",
    "https",
    "key_set",
    "make_gateway",
    "pki",
    "rogue_pki",
    "signing_key",
    "standin",
    "status_gateway",
    "stranger_key",
    "tls_gateway",
    "unconfigured",
]
