"""Serve the LAN as the README says: `.venv/bin/fognode serve --host '*'`, and a laptop uses it.

The node machine serves the LAN of the session's namespaces on the defaults
(no upstream named: the embedded model; before, the README's command named
an upstream and every chat was 502 without Ollama). The laptop installs only
the command line (`./setup.sh --cli`) and chats with the node found by mDNS,
with the CA copied over and a key; `fognode certs qr` on the node prints the
link of the page the running node serves; the start log says where the LAN
reaches the node; `discover --watch` reports the node once.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fognode.supervision import cores
from tests.system.newcomer import readme
from tests.system.newcomer.conftest import Newcomer, Served, serve

SERVE_LAN = ".venv/bin/fognode serve --host '*'"


@pytest.fixture(scope="module")
def lan_node(newcomer: Newcomer) -> Iterator[Served]:
    yield from serve(newcomer.node, readme.command(SERVE_LAN))


def test_the_start_log_says_where_the_lan_reaches_the_node(
    newcomer: Newcomer, lan_node: Served
) -> None:
    """Issue item 8: `--host '*'` logged `listening on https://127.0.0.1:8443`,
    and each worker its share of the per-client cap (32) as if it were the
    node's (64)."""
    said = lan_node.log()
    address = newcomer.lan.a.address
    assert (
        f"listening on every interface, port 8443 (https://{address}:8443, https://127.0.0.1:8443)"
    ) in said
    assert "64 per client address" in said
    if cores() > 1:
        assert f"each of the {cores()} workers enforces its share" in said
        assert f"{64 // cores()} per client address" not in said
    assert "does not name" not in said  # setup.sh ran here: the address is in it


def test_a_laptop_with_the_cli_only_chats_with_the_lan_node(
    newcomer: Newcomer, lan_node: Served, laptop_home: Path
) -> None:
    """Issue item 1: the node the README serves the LAN with answers chats
    (no upstream named); the laptop installs the command line only."""
    laptop = newcomer.laptop
    setup, chat = readme.block("./setup.sh --cli").lines
    laptop.run(setup, timeout=300)
    assert not laptop.data.exists()  # no model, certificates or key on a laptop
    key = (newcomer.node.data / "admin-api-key").read_text().strip()
    answered = laptop.run(chat, timeout=90, KEY=key)
    assert f"Using SpeziLLMFog Service at https://{newcomer.lan.a.address}:8443" in (
        answered.stderr
    )
    assert answered.stdout.strip(), answered.stderr


def test_certs_qr_is_the_running_pages_link(newcomer: Newcomer, lan_node: Served) -> None:
    """Issue item 6: `fognode certs qr` read the settings, not the running
    node, and printed http://127.0.0.1/ca for a node serving the LAN."""
    shown = newcomer.node.run(readme.command(".venv/bin/fognode certs qr"))
    link = f"http://{newcomer.lan.a.address}/ca"
    assert link in shown.stdout, shown.stdout[-800:]
    assert "127.0.0.1" not in shown.stdout
    assert "no node is running" not in shown.stderr
    running = json.loads((newcomer.node.data / "running.json").read_text())
    assert running["onboarding"] == f"http://{newcomer.lan.a.address}"
    # The page behind the link hands out the CA the QR code's fingerprint names.
    page = newcomer.laptop.curl("-L", link)
    ca = (newcomer.node.data / "certs" / "export" / "fognode-ca.crt").read_text()
    assert page.stdout.strip() == ca.strip()


def test_discover_watch_reports_the_node_once(newcomer: Newcomer, lan_node: Served) -> None:
    """Issue item 8: `discover --watch` reported a change at once, with
    nothing changed (the node seen in its second DNS-SD domain)."""
    watcher = newcomer.laptop.start(".venv/bin/fognode discover --watch --json")
    try:
        events = []
        deadline = time.monotonic() + 8
        for line in watcher.lines(deadline):
            if line.startswith("{"):
                events.append(json.loads(line))
    finally:
        watcher.stop()
    assert events and events[0]["event"] == "added", events
    assert events[0]["addresses"] == [newcomer.lan.a.address]

    # A change reported is a change of what the node says (its load falling
    # after the chat above, say), never the same records seen again.
    def said(event: dict[str, object]) -> tuple[object, ...]:
        return (event["host"], event["port"], event["addresses"], event["txt"])

    for before, after in itertools.pairwise(events):
        assert after["event"] == "updated" and said(after) != said(before), (before, after)
