"""The unit level: one part or one stage at a time, fast.

No process, no network beyond loopback sockets, no browser, no emulator, no
PostgreSQL: the fixtures below refuse the first two, so a test that needs
them fails here with the level it belongs to instead of slowing every run.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.onboarding import ca_forms, clinic_pki, onboarding
from tests.support.tokens import key_set, signing_key, stranger_key, verifier

__all__ = [
    "ca_forms",
    "clinic_pki",
    "key_set",
    "onboarding",
    "signing_key",
    "stranger_key",
    "verifier",
]


class _NoProcess(subprocess.Popen[Any]):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(
            f"a unit test started a process {args[:1]}: it belongs in tests/system/"
        )


def _loopback_only(connect: Any) -> Any:
    def guarded(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host != "localhost" and not ipaddress.ip_address(host.split("%")[0]).is_loopback:
                raise AssertionError(f"a unit test connected to {host}: only loopback here")
        return connect(sock, address)

    return guarded


@pytest.fixture(autouse=True)
def _unit_level_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(subprocess, "Popen", _NoProcess)
    monkeypatch.setattr(socket.socket, "connect", _loopback_only(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", _loopback_only(socket.socket.connect_ex))
    yield
