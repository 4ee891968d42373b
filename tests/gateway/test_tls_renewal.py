"""Certificates replaced on disk are reloaded by the in-process server without
a restart: picked up when whole, kept when half-written, an overdue renewal
warned about. `fognode certs renew`, another process, is in
tests/system/test_tls_renewal.py; the server itself never signs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fognode.certs.issuer import SubjectNames
from fognode.certs.lifecycle import issue_to_files, signing_authority
from fognode.gateway.transport.cert_renewal import CERTIFICATES
from tests.support.gateway import GatewayFactory
from tests.support.helpers import wait_until
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import NODE_NAMES, make_pki
from tests.support.tls import served_serial

DAY = 86400.0


async def test_certificate_replaced_on_disk_is_picked_up(
    standin: OllamaStandIn, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    gateway = await make_gateway(
        standin.url, tls=True, certs_dir=pki.paths.directory, cert_check_interval=0.25
    )
    terminator = gateway.app[CERTIFICATES]
    first = await asyncio.to_thread(served_serial, gateway.port, pki.ca)
    # What an operator running `fognode certs issue` by hand does.
    signer = signing_authority(pki.issuer, pki.paths, None)
    await asyncio.to_thread(issue_to_files, pki.paths, signer, SubjectNames.parse(NODE_NAMES))
    await wait_until(lambda: terminator.reloads == 1, "reload", limit=30)
    assert await asyncio.to_thread(served_serial, gateway.port, pki.ca) != first


async def test_overdue_renewal_warns_and_keeps_serving(
    standin: OllamaStandIn,
    make_gateway: GatewayFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pki = make_pki(tmp_path / "pki", validity_days=60 / DAY)
    gateway = await make_gateway(
        standin.url,
        tls=True,
        certs_dir=pki.paths.directory,
        cert_renew_before_days=1,
        cert_check_interval=3600,
    )
    terminator = gateway.app[CERTIFICATES]
    first = await asyncio.to_thread(served_serial, gateway.port, pki.ca)
    assert await asyncio.to_thread(terminator.check_once) == "renewal-overdue"
    assert "never signs" in caplog.text and "fognode certs renew" in caplog.text
    assert await asyncio.to_thread(served_serial, gateway.port, pki.ca) == first


async def test_half_written_pair_is_not_loaded(
    standin: OllamaStandIn, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """A key replaced without its certificate (mid-renewal) must not reach clients."""
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")
    gateway = await make_gateway(
        standin.url, tls=True, certs_dir=pki.paths.directory, cert_check_interval=3600
    )
    terminator = gateway.app[CERTIFICATES]
    first = await asyncio.to_thread(served_serial, gateway.port, pki.ca)
    pki.paths.server_key.write_bytes(other.paths.server_key.read_bytes())
    assert await asyncio.to_thread(terminator.check_once) is None
    assert terminator.reloads == 0
    assert await asyncio.to_thread(served_serial, gateway.port, pki.ca) == first
