"""Certificates renewed by `fognode certs renew`, another process (which holds the
issuing CA), and reloaded by the in-process server without a restart or a
dropped stream; the server itself never signs. The reloads that need no
other process are in tests/gateway/test_tls_renewal.py."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest

from fognode.gateway.config.settings import Settings
from fognode.gateway.node.server import log_serving
from fognode.gateway.transport.cert_renewal import CERTIFICATES
from tests.support.gateway import GatewayFactory
from tests.support.helpers import wait_until
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import NODE_NAMES, Pki, make_legacy_pki, make_pki
from tests.support.tls import HOST, served_serial

DAY = 86400.0


async def renew_command(pki: Pki, *args: str) -> tuple[int, str]:
    """`fognode certs renew` as the renewal unit runs it: another process."""
    env = {
        **os.environ,
        "FOGNODE_CERTS_DIR": str(pki.paths.directory),
        "FOGNODE_ISSUER_DIR": str(pki.issuer.directory),
        "FOGNODE_CA_DIR": str(pki.root.directory),
        "FOGNODE_CERT_NAMES": ",".join(NODE_NAMES),
        "FOGNODE_CERT_RENEW_BEFORE_DAYS": str(15 / DAY),  # due five seconds after the start
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fognode.gateway.cli",
        "certs",
        "renew",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return await proc.wait(), out.decode()


async def test_expiring_certificate_is_renewed_while_a_stream_stays_open(
    standin: OllamaStandIn, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki", validity_days=20 / DAY)
    gateway = await make_gateway(
        standin.url,
        tls=True,
        certs_dir=pki.paths.directory,
        cert_check_interval=0.25,
    )
    terminator = gateway.app[CERTIFICATES]
    first = await asyncio.to_thread(served_serial, gateway.port, pki.ca)

    # Open a stream over the first certificate and hold it mid-answer.
    standin.gate = asyncio.Queue()
    standin.gate.put_nowait(None)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    connector = aiohttp.TCPConnector(ssl=ctx, resolver=ResolveTo127())
    async with aiohttp.ClientSession(connector=connector) as http:
        resp = await http.post(
            f"https://{HOST}:{gateway.port}/v1/chat/completions",
            json={
                "model": "llama3.2:1b",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        first_event = await resp.content.readuntil(b"\n\n")
        assert first_event.startswith(b"data: {")

        # Not due yet, then due (15 seconds before the end).
        code, said = await renew_command(pki)
        assert code == 0 and "nothing to renew" in said, said
        await asyncio.sleep(5)
        code, said = await renew_command(pki)
        assert code == 0 and "Renewed" in said and "expires in" in said, said
        await wait_until(lambda: terminator.reloads == 1, "reload", limit=30)
        second = await asyncio.to_thread(served_serial, gateway.port, pki.ca)
        assert second != first  # new connections get the new certificate

        # The open stream, still on the old certificate, finishes normally.
        for _ in range(100):
            standin.gate.put_nowait(None)
        rest = await resp.content.read()
        resp.release()
    events = [e.removeprefix("data: ") for e in (first_event + rest).decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == standin.reply
    renewed = terminator.pair
    assert renewed is not None
    lifetime = renewed.leaf.not_valid_after_utc - renewed.leaf.not_valid_before_utc
    assert 89 < lifetime.total_seconds() / DAY <= 90.01
    assert len(renewed.chain) == 2  # the leaf and this node's issuing CA


async def test_an_old_ca_keeps_serving_warns_and_renews_for_90_days(
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node set up before name constraints: it still serves, says what is
    wrong, and `certs renew` signs a 90-day certificate with the old root."""
    pki = make_legacy_pki(tmp_path / "pki")
    gateway = await make_gateway(
        standin.url, tls=True, certs_dir=pki.paths.directory, cert_check_interval=0.25
    )
    terminator = gateway.app[CERTIFICATES]
    log_serving(
        Settings(certs_dir=pki.paths.directory), "https://x", "up", terminator.tls, False, 1
    )
    assert "has no name constraints" in caplog.text and "fognode certs check" in caplog.text
    first = await asyncio.to_thread(served_serial, gateway.port, pki.ca)
    code, said = await renew_command(pki, "--force")
    assert code == 0 and "Renewed" in said, said
    await wait_until(lambda: terminator.reloads == 1, "reload", limit=30)
    assert await asyncio.to_thread(served_serial, gateway.port, pki.ca) != first
    renewed = terminator.pair
    assert renewed is not None and len(renewed.chain) == 1  # the old root signs directly
    lifetime = renewed.leaf.not_valid_after_utc - renewed.leaf.not_valid_before_utc
    assert lifetime.total_seconds() / DAY <= 90.01


class ResolveTo127(aiohttp.abc.AbstractResolver):
    """Resolve every name to 127.0.0.1, as mDNS would resolve the node's name."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None
