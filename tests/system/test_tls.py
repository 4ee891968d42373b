"""Real TLS handshakes against the gateway from client programs: curl and
openssl s_client, each a process of its own, and `fognode serve` refusing
certificates it cannot use.

Each client trusts only the CA it is given and checks the name
spezillmfog.local while connecting to 127.0.0.1, as the SpeziLLMFog client
connects to the IP it resolved. Each must succeed against the node's CA and
fail against another CA, a wrong host name, and an expired certificate.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fognode.gateway.node.server import RunningServer
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import Pki
from tests.support.tls import HOST

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="setup.sh installs curl")


needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="setup.sh installs openssl"
)


async def curl(
    port: int, cafile: Path, name: str = HOST, path: str = "/healthz", data: str | None = None
) -> tuple[int, str, str]:
    args = [
        "curl",
        "-sS",
        "-N",
        "--max-time",
        "20",
        "--cacert",
        str(cafile),
        "--resolve",
        f"{name}:{port}:127.0.0.1",
        f"https://{name}:{port}{path}",
    ]
    if data is not None:
        args += ["-H", "Content-Type: application/json", "-d", data]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@needs_curl
async def test_curl_with_cacert_and_resolve(
    tls_gateway: RunningServer, pki: Pki, rogue_pki: Pki, standin: OllamaStandIn
) -> None:
    code, out, err = await curl(tls_gateway.port, pki.ca)
    assert code == 0, err
    assert json.loads(out)["status"] == "ok"
    # Exit 60: "Peer certificate cannot be authenticated with known CA certificates"
    code, _, err = await curl(tls_gateway.port, rogue_pki.ca)
    assert code == 60, err
    code, _, err = await curl(tls_gateway.port, pki.ca, name="wrong.local")
    assert code == 60 and "wrong.local" in err
    # A streamed chat completion over TLS, end to end.
    body = json.dumps(
        {"model": "llama3.2:1b", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    code, out, err = await curl(tls_gateway.port, pki.ca, path="/v1/chat/completions", data=body)
    assert code == 0, err
    events = [e.removeprefix("data: ") for e in out.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == standin.reply


@needs_curl
async def test_curl_refuses_an_expired_certificate(
    expired_gateway: tuple[RunningServer, Pki],
) -> None:
    gateway, pki = expired_gateway
    code, _, err = await curl(gateway.port, pki.ca)
    assert code == 60 and "expired" in err


async def s_client(port: int, cafile: Path, name: str | None = HOST) -> tuple[int, str]:
    args = [
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-CAfile",
        str(cafile),
        "-verify_return_error",
        "-brief",
    ]
    if name is None:
        args += ["-noservername", "-verify_hostname", HOST]
    else:
        args += ["-servername", name, "-verify_hostname", name]
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@needs_openssl
async def test_openssl_s_client_verify_return_error(
    tls_gateway: RunningServer, pki: Pki, rogue_pki: Pki
) -> None:
    code, out = await s_client(tls_gateway.port, pki.ca)
    assert code == 0, out
    assert "Verification: OK" in out
    code, out = await s_client(tls_gateway.port, pki.ca, name=None)  # no SNI
    assert code == 0 and "Verification: OK" in out, out
    code, out = await s_client(tls_gateway.port, rogue_pki.ca)
    assert code != 0 and "unable to get local issuer certificate" in out
    code, out = await s_client(tls_gateway.port, pki.ca, name="wrong.local")
    assert code != 0 and "hostname mismatch" in out


@needs_openssl
async def test_openssl_refuses_an_expired_certificate(
    expired_gateway: tuple[RunningServer, Pki],
) -> None:
    gateway, pki = expired_gateway
    code, out = await s_client(gateway.port, pki.ca)
    assert code != 0 and "certificate has expired" in out


def test_cli_serve_refuses_missing_certificates_with_a_clear_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOGNODE_")}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"))
    proc = subprocess.run(
        [sys.executable, "-m", "fognode.gateway.cli", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot serve TLS" in proc.stderr and "fognode certs init" in proc.stderr
    assert str(tmp_path / "data" / "fognode" / "certs") in proc.stderr
