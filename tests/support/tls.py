"""TLS as the SpeziLLMFog app does it, and gateways that serve it: one with the
node's certificate (the `pki` fixture), one whose certificate has expired,
and a CA that is not the node's."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from fognode.gateway.node.server import RunningServer
from tests.support.gateway import GatewayFactory
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import Pki, make_pki

# The name the app checks; it connects to the address it resolved.
HOST = "spezillmfog.local"


def served_serial(port: int, cafile: Path) -> int:
    """Serial number of the certificate a new connection is given."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


class ConnectByIp(httpx.AsyncHTTPTransport):
    """What the SpeziLLMFog client does: dial the resolved IP, keep the name.

    The TCP connection goes to 127.0.0.1, while TLS (SNI and the host name
    check) and the Host header use the node's name.
    """

    def __init__(self, ip: str, verify: ssl.SSLContext) -> None:
        super().__init__(verify=verify)
        self.ip = ip

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        name = request.url.host
        request.url = request.url.copy_with(host=self.ip)
        request.headers["Host"] = f"{name}:{request.url.port}"
        request.extensions["sni_hostname"] = name
        return await super().handle_async_request(request)


@pytest.fixture
def rogue_pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "rogue", common_name="not the node's CA")


@pytest.fixture
async def tls_gateway(
    standin: OllamaStandIn, make_gateway: GatewayFactory, pki: Pki
) -> RunningServer:
    return await make_gateway(standin.url, tls=True, certs_dir=pki.paths.directory)


@pytest.fixture
async def expired_gateway(
    standin: OllamaStandIn, make_gateway: GatewayFactory, tmp_path: Path
) -> AsyncIterator[tuple[RunningServer, Pki]]:
    """A gateway whose certificate expires two seconds after it starts."""
    pki = make_pki(tmp_path / "short", validity_days=2 / 86400)
    gateway = await make_gateway(
        standin.url,
        tls=True,
        certs_dir=pki.paths.directory,
        cert_renew_before_days=0,
        cert_check_interval=3600,
    )
    await asyncio.sleep(2.5)
    yield gateway, pki
