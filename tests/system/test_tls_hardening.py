"""TLS without a cheap CPU attack, and session resumption whichever worker answers.

Real clients: OpenSSL's s_client offering finite-field groups, Python's ssl
resuming sessions against `fognode serve --workers 2`, and the auditors an
operator would run, testssl.sh (Debian) and sslyze (PyPI, in its own venv
that setup.sh makes), against a real node.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.support.gateway import GatewayFactory
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import Pki, make_pki
from tests.support.processes import NodeProcess

ALLOWED = ("X25519", "P-256", "P-384")
OPENSSL_NAMES = {"X25519": "X25519", "P-256": "ECDH, prime256v1", "P-384": "ECDH, secp384r1"}
REFUSED = ("ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192", "X448", "P-521")


def s_client(port: int, ca: Path, *args: str) -> str:
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca), *args],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    return out.stdout.decode(errors="replace") + out.stderr.decode(errors="replace")


async def test_only_x25519_p256_p384_are_accepted(
    standin: OllamaStandIn, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "certs")
    gateway = await make_gateway(standin.url, tls=True, certs_dir=pki.paths.directory)
    for group in ALLOWED:
        said = await asyncio.to_thread(s_client, gateway.port, pki.ca, "-tls1_3", "-groups", group)
        assert "Verify return code: 0 (ok)" in said, said
        assert f"Server Temp Key: {OPENSSL_NAMES[group]}" in said, said
    # A client that offers only expensive or unlisted groups gets no handshake.
    for group in REFUSED:
        said = await asyncio.to_thread(s_client, gateway.port, pki.ca, "-tls1_3", "-groups", group)
        assert "Cipher is (NONE)" in said or "handshake failure" in said, (group, said)
    # What a real client offers: its preference among several, ffdhe first.
    said = await asyncio.to_thread(
        s_client, gateway.port, pki.ca, "-tls1_3", "-groups", "ffdhe8192:ffdhe2048:P-384:X25519"
    )
    assert "Server Temp Key: ECDH, secp384r1" in said or "Server Temp Key: X25519" in said, said
    # TLS 1.2 stays for older phones, with the same groups (ECDHE only).
    said = await asyncio.to_thread(
        s_client, gateway.port, pki.ca, "-tls1_2", "-groups", "X25519:P-256"
    )
    assert "Protocol  : TLSv1.2" in said and "Server Temp Key: X25519" in said, said
    said = await asyncio.to_thread(
        s_client, gateway.port, pki.ca, "-tls1_2", "-groups", "X448:P-521:P-256"
    )
    assert "Server Temp Key: ECDH, prime256v1" in said, said


def resumptions(port: int, ca: Path, tries: int) -> tuple[bool, int]:
    """One full handshake, then ``tries`` new connections offering its session."""
    ctx = ssl.create_default_context(cafile=str(ca))

    def connect(session: ssl.SSLSession | None) -> tuple[ssl.SSLSession | None, bool]:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="spezillmfog.local", session=session) as tls:
            # A request and its answer: TLS 1.3 tickets arrive after the handshake.
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: spezillmfog.local\r\n")
            tls.sendall(b"Connection: close\r\n\r\n")
            while tls.recv(65536):
                pass
            return tls.session, tls.session_reused

    session, reused = connect(None)
    assert session is not None and session.has_ticket and not reused
    return True, sum(connect(session)[1] for _ in range(tries))


async def serving_node(tmp_path: Path, pki: Pki, standin: OllamaStandIn) -> NodeProcess:
    process = NodeProcess(
        tmp_path,
        {
            "workers": "2",
            "certs_dir": str(pki.paths.directory),
            "upstream_url": standin.url,
            "auth": "none",
        },
    )
    await process.start(ssl.create_default_context(cafile=str(pki.ca)))
    return process


@pytest.mark.slow
async def test_sessions_resume_whichever_of_two_workers_answers(
    standin: OllamaStandIn, tmp_path: Path
) -> None:
    """Each new connection lands on either worker (SO_REUSEPORT); with keys
    made per process half of them failed to resume (4 of 8 before)."""
    pki = make_pki(tmp_path / "certs")
    process = await serving_node(tmp_path, pki, standin)
    try:
        _, resumed = await asyncio.to_thread(resumptions, process.port, pki.ca, 16)
    finally:
        await process.astop()
    assert resumed == 16


def sslyze_python() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fognode"
    found = sorted(cache.glob("sslyze-*/bin/python"))
    assert found, f"setup.sh installs sslyze into {cache}/sslyze-<version>"
    return found[-1]


@pytest.mark.slow
async def test_testssl_and_sslyze_see_three_groups_and_a_90_day_certificate(
    standin: OllamaStandIn, tmp_path: Path
) -> None:
    testssl = shutil.which("testssl") or shutil.which("testssl.sh")
    assert testssl, "setup.sh installs testssl.sh (Debian)"
    pki = make_pki(tmp_path / "certs")
    process = await serving_node(tmp_path, pki, standin)
    target = f"127.0.0.1:{process.port}"
    try:
        audit = await asyncio.create_subprocess_exec(
            testssl,
            "--quiet",
            "--color",
            "0",
            "--fs",
            "--server-defaults",
            "--jsonfile",
            str(tmp_path / "testssl.json"),
            target,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        scan = await asyncio.create_subprocess_exec(
            str(sslyze_python()),
            "-m",
            "sslyze",
            target,
            "--elliptic_curves",
            "--certinfo",
            "--quiet",
            f"--json_out={tmp_path / 'sslyze.json'}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.wait_for(asyncio.gather(audit.wait(), scan.wait()), 300)
    finally:
        await process.astop()

    findings = {e["id"]: e["finding"] for e in json.loads((tmp_path / "testssl.json").read_text())}
    assert findings["PFS_ECDHE_curves"].split() == ["prime256v1", "secp384r1", "X25519"]
    assert "DH_groups" not in findings  # no finite-field group offered at all
    assert findings["cert_expirationStatus"].split()[0] in ("89", "90")

    result = json.loads((tmp_path / "sslyze.json").read_text())["server_scan_results"][0]
    curves = result["scan_result"]["elliptic_curves"]["result"]
    assert sorted(c["name"] for c in curves["supported_curves"]) == [
        "X25519",
        "secp256r1",
        "secp384r1",
    ]
    deployment = result["scan_result"]["certificate_info"]["result"]["certificate_deployments"][0]
    leaf = deployment["received_certificate_chain"][0]
    lifetime = dt.datetime.fromisoformat(leaf["not_valid_after"]) - dt.datetime.fromisoformat(
        leaf["not_valid_before"]
    )
    assert lifetime <= dt.timedelta(days=90, minutes=10)
    assert len(deployment["received_certificate_chain"]) == 2  # leaf and issuing CA
