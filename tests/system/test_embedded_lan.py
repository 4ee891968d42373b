"""A fresh node on a LAN: no Ollama, nothing configured, found and used by the CLI.

The node runs in its own network namespace, where nothing listens at
Ollama's default address, so `fognode serve` chooses the embedded model by
itself. From the other namespace, `fognode discover` sees the model in the
node's TXT record and `fognode chat` streams a generated answer from it,
over TLS with the CA pinned, as the README shows.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fognode.auth.api_keys import entry_for, new_key
from tests.support.embedded_node import MODEL
from tests.support.netns import Lan, unavailable_reason, wait_http
from tests.support.pki import make_pki
from tests.support.processes import ROOT, NodeProcess

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

PORT = 8443


def test_unconfigured_node_serves_the_embedded_model_to_discover_and_chat(
    lan: Lan, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki", names=("spezillmfog.local", "localhost"))
    key = new_key()
    node = NodeProcess(
        tmp_path,
        host=lan.a,
        args=["--host", "*", "--port", str(PORT)],
        env={
            "XDG_DATA_HOME": str(tmp_path / "data"),
            "FOGNODE_CERTS_DIR": str(pki.paths.directory),
            "FOGNODE_API_KEYS": entry_for(key, "lan-test", admin=False),
            "FOGNODE_MDNS_REFRESH_INTERVAL": "0.5",
            "FOGNODE_MDNS_MIN_UPDATE_INTERVAL": "0.5",
            # Bounds an answer that would not stop by itself.
            "FOGNODE_EMBEDDED_CONTEXT_SIZE": "512",
        },
    )
    node.launch()
    try:
        wait_http(lan.b, f"https://{lan.a.address}:{PORT}/healthz")
        nodes: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            out = subprocess.run(
                lan.b.fognode("discover", "--json", "--timeout", "1"),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            nodes = json.loads(out.stdout or "[]")
            if nodes and nodes[0]["txt"]["models"] == [MODEL]:
                break
        assert nodes and nodes[0]["txt"]["models"] == [MODEL], nodes
        assert nodes[0]["txt"]["api"] == "openai"

        chat = subprocess.run(
            lan.b.fognode(
                "chat",
                "Say hello to a new user in one short sentence.",
                "--model",
                MODEL,
                "--ca",
                str(pki.ca),
                "--api-key",
                key,
                "--timeout",
                "3",
            ),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert chat.returncode == 0, chat.stderr
        print(f"\nfognode chat, answered by the embedded model: {chat.stdout.strip()!r}")
        assert chat.stdout.strip()
    finally:
        node.stop()
    log = node.log()
    assert "no upstream configured and no Ollama at http://127.0.0.1:11434" in log
    assert "llama.cpp server stopped" in log
