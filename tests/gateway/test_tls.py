"""Real TLS handshakes against the gateway from real clients.

Each client trusts only the CA it is given and checks the name
spezillmfog.local while connecting to 127.0.0.1, as the SpeziLLMFog client
connects to the IP it resolved. Each must succeed against the node's CA and
fail against another CA, a wrong host name, and an expired certificate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import warnings
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from fognode.certs.errors import CertError
from fognode.gateway.node.server import RunningServer
from tests.support.gateway import GatewayFactory
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import Pki, make_pki
from tests.support.tls import HOST, ConnectByIp


def handshake(port: int, cafile: Path, server_hostname: str | None = HOST) -> dict[str, object]:
    ctx = ssl.create_default_context(cafile=str(cafile))
    if server_hostname is None:
        ctx.check_hostname = False  # no SNI, but the chain is still verified
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        cert = tls.getpeercert()
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        return cert  # type: ignore[return-value]


async def test_python_ssl_trusting_only_the_ca(
    tls_gateway: RunningServer, pki: Pki, rogue_pki: Pki
) -> None:
    cert = await asyncio.to_thread(handshake, tls_gateway.port, pki.ca)
    assert ("DNS", HOST) in cert["subjectAltName"]  # type: ignore[operator]
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        await asyncio.to_thread(handshake, tls_gateway.port, rogue_pki.ca)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        await asyncio.to_thread(handshake, tls_gateway.port, pki.ca, "other.local")


async def test_default_certificate_without_sni(tls_gateway: RunningServer, pki: Pki) -> None:
    """The reference client connects by IP and may send no SNI at all."""
    cert = await asyncio.to_thread(handshake, tls_gateway.port, pki.ca, None)
    assert ("DNS", HOST) in cert["subjectAltName"]  # type: ignore[operator]


async def test_python_ssl_refuses_an_expired_certificate(
    expired_gateway: tuple[RunningServer, Pki],
) -> None:
    gateway, pki = expired_gateway
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        await asyncio.to_thread(handshake, gateway.port, pki.ca)


def tls12_only(port: int, cafile: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return cipher[0]


def old_tls(port: int, maximum: ssl.TLSVersion) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # old versions on purpose
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        ctx.wrap_socket(raw, server_hostname=HOST).close()


async def test_tls12_uses_forward_secret_aead_and_tls11_is_refused(
    tls_gateway: RunningServer, pki: Pki
) -> None:
    cipher = await asyncio.to_thread(tls12_only, tls_gateway.port, pki.ca)
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)
    # The server says why (a protocol_version alert, not a bare EOF); a client
    # that refused to offer TLS 1.1 itself would fail with NO_PROTOCOLS_AVAILABLE
    # before connecting.
    for maximum in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError, match=r"ALERT_PROTOCOL_VERSION"):
            await asyncio.to_thread(old_tls, tls_gateway.port, maximum)


def openai_client(port: int, cafile: Path) -> openai.AsyncOpenAI:
    ctx = ssl.create_default_context(cafile=str(cafile))
    http_client = httpx.AsyncClient(transport=ConnectByIp("127.0.0.1", ctx))
    return openai.AsyncOpenAI(
        base_url=f"https://{HOST}:{port}/v1",
        api_key="unused",
        http_client=http_client,
        max_retries=0,
    )


async def _stream_chat(client: openai.AsyncOpenAI) -> str:
    stream = await client.chat.completions.create(
        model="llama3.2:1b",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    return "".join(parts)


async def test_openai_sdk_over_tls_trusting_only_the_ca(
    tls_gateway: RunningServer, pki: Pki, rogue_pki: Pki, standin: OllamaStandIn
) -> None:
    client = openai_client(tls_gateway.port, pki.ca)
    assert await _stream_chat(client) == standin.reply
    assert standin.last("/v1/chat/completions").headers["X-Forwarded-Proto"] == "https"
    await client.close()

    rogue = openai_client(tls_gateway.port, rogue_pki.ca)
    with pytest.raises(openai.APIConnectionError) as caught:
        await _stream_chat(rogue)
    assert "CERTIFICATE_VERIFY_FAILED" in repr(caught.value.__cause__)
    await rogue.close()


async def test_openai_sdk_refuses_wrong_name_and_expired(
    expired_gateway: tuple[RunningServer, Pki], tls_gateway: RunningServer, pki: Pki
) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    wrong = openai.AsyncOpenAI(
        base_url=f"https://wrong.local:{tls_gateway.port}/v1",
        api_key="unused",
        http_client=httpx.AsyncClient(transport=ConnectByIp("127.0.0.1", ctx)),
        max_retries=0,
    )
    with pytest.raises(openai.APIConnectionError) as caught:
        await _stream_chat(wrong)
    assert "Hostname mismatch" in repr(caught.value.__cause__)
    await wrong.close()

    gateway, pki = expired_gateway
    expired = openai_client(gateway.port, pki.ca)
    with pytest.raises(openai.APIConnectionError) as caught:
        await _stream_chat(expired)
    assert "expired" in repr(caught.value.__cause__)
    await expired.close()


async def test_refuses_to_start_with_unusable_certificates(
    standin: OllamaStandIn, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    node = make_pki(tmp_path / "node")
    other = make_pki(tmp_path / "other")
    # Key that does not belong to the certificate.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("ca.crt", "server.crt"):
        (mixed / name).write_bytes((node.paths.directory / name).read_bytes())
    (mixed / "server.key").write_bytes(other.paths.server_key.read_bytes())
    with pytest.raises(CertError, match="does not match"):
        await make_gateway(standin.url, tls=True, certs_dir=mixed)
    # Certificate from another CA than the configured one.
    with pytest.raises(CertError, match="does not chain"):
        await make_gateway(
            standin.url, tls=True, certs_dir=node.paths.directory, tls_ca_file=other.ca
        )
    # Expired.
    short = make_pki(tmp_path / "short", validity_days=1 / 86400)
    await asyncio.sleep(1.5)
    with pytest.raises(CertError, match="expired"):
        await make_gateway(standin.url, tls=True, certs_dir=short.paths.directory)
    # Missing files say how to make them.
    with pytest.raises(CertError, match="fognode certs init"):
        await make_gateway(standin.url, tls=True, certs_dir=tmp_path / "empty")


async def test_ollama_client_over_tls(
    tls_gateway: RunningServer, pki: Pki, standin: OllamaStandIn
) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    client = ollama.AsyncClient(host=f"https://localhost:{tls_gateway.port}", verify=ctx)
    parts = [
        part.message.content
        async for part in await client.chat(
            model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    ]
    assert "".join(parts) == standin.reply


async def test_a_large_body_over_tls_arrives_whole(
    tls_gateway: RunningServer, pki: Pki, standin: OllamaStandIn
) -> None:
    """The TLS receive buffer is smaller than asyncio's (connections.py): a body
    of many TLS records, as an image in a chat request, still arrives byte for
    byte."""
    image = base64.b64encode(os.urandom(3 * 1024 * 1024)).decode()  # 4 MiB of base64
    client = openai_client(tls_gateway.port, pki.ca)
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
    ]
    answer = await client.chat.completions.create(
        model="llama3.2:1b", messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content == standin.reply
    sent = json.loads(standin.last("/v1/chat/completions").body)
    assert sent["messages"][0]["content"][1]["image_url"]["url"] == f"data:image/png;base64,{image}"
    await client.close()
