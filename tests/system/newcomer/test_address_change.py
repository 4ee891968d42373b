"""DHCP gives the node machine another address: the certificate follows, by name and by renewal.

Issue item 7: the certificate held the addresses of setup time; after a
change the node announced an address its certificate lacked, `https://<new
ip>` failed, and nothing said so at start. Now the node's own mDNS name
(fognode-<id>.local) is in the certificate and works whatever the address,
the node says at start which address its certificate lacks, and `fognode
certs renew` (setup.sh runs it too) re-issues it for the addresses of now.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.newcomer import readme
from tests.system.newcomer.conftest import Newcomer, serve

SERVE_LAN = ".venv/bin/fognode serve --host '*'"


@pytest.fixture
def moved(newcomer: Newcomer) -> Iterator[str]:
    """The node machine's new address (its old one given back at the end)."""
    host = newcomer.lan.a
    old = host.address
    new = old.rsplit(".", 1)[0] + ".77"
    device = subprocess.run(
        host.command("ip", "-o", "-4", "addr", "show", "to", old),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]

    def readdress(drop: str, add: str) -> None:
        subprocess.run(host.command("ip", "addr", "del", f"{drop}/24", "dev", device), check=True)
        subprocess.run(host.command("ip", "addr", "add", f"{add}/24", "dev", device), check=True)

    readdress(old, new)
    try:
        yield new
    finally:
        readdress(new, old)
        # Back where it was, as the other tests expect it: renewed for it again.
        newcomer.node.run(".venv/bin/fognode certs renew")


def laptop_curl(newcomer: Newcomer, url: str) -> subprocess.CompletedProcess[str]:
    return newcomer.laptop.curl("--cacert", str(newcomer.laptop.home / "fognode-ca.crt"), url)


def test_the_certificate_follows_a_new_address(
    newcomer: Newcomer, moved: str, laptop_home: Path
) -> None:
    node_id = (newcomer.node.data / "node-id").read_text().strip()
    own = f"fognode-{node_id[:8]}.local"
    key = (newcomer.node.data / "admin-api-key").read_text().strip()

    # No node runs: `certs qr` says that its link is the settings', not a page's.
    qr = newcomer.node.run(readme.command(".venv/bin/fognode certs qr"))
    assert "no node is running" in qr.stderr

    node = serve(newcomer.node, readme.command(SERVE_LAN))
    served = next(node)
    try:
        said = served.log()
        assert f"does not name {moved}" in said and "fognode certs renew" in said
        assert f"https://{own}:8443" in said
        # The address fails the certificate check; the node's own name works.
        refused = laptop_curl(newcomer, f"https://{moved}:8443/healthz")
        assert refused.returncode == 60, refused.stderr  # curl: peer certificate
        by_name = newcomer.laptop.run(
            f".venv/bin/fognode chat 'Say hi.' --model smollm2:135m --url https://{own}:8443 "
            '--ca ~/fognode-ca.crt --api-key "$KEY"',
            timeout=90,
            KEY=key,
        )
        assert by_name.stdout.strip(), by_name.stderr
        assert f"Using https://{moved}:8443/v1" in by_name.stderr  # found by mDNS

        renewed = newcomer.node.run(".venv/bin/fognode certs renew")
        assert "Renewed" in renewed.stdout and moved in renewed.stdout
    finally:
        node.close()

    # Started again: nothing to warn about, and the new address passes the check.
    node = serve(newcomer.node, readme.command(SERVE_LAN))
    served = next(node)
    try:
        assert "does not name" not in served.log()
        ok = laptop_curl(newcomer, f"https://{moved}:8443/healthz")
        assert ok.returncode == 0 and '"ok"' in ok.stdout, ok.stderr
    finally:
        node.close()
