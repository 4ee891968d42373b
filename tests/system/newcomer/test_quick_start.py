"""The quick start as written: `./setup.sh --no-test`, `.venv/bin/fognode serve`, then the week.

One node, started by the README's own command on the defaults (no upstream
named: the embedded model; one worker per core; TLS on 8443 with setup.sh's
certificates; the admin key setup.sh made), and what an operator does with
it in the first days: the README's curl, the status page, `fognode models`,
a key for a phone made and then revoked while the node runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from fognode.supervision import cores
from tests.system.newcomer import readme
from tests.system.newcomer.conftest import Newcomer, Served, serve

SERVE = readme.command("./setup.sh --no-test", 1)


@pytest.fixture(scope="module")
def node(newcomer: Newcomer) -> Iterator[Served]:
    assert SERVE == ".venv/bin/fognode serve"  # the quick start serves on the defaults
    yield from serve(newcomer.node, SERVE)


def curl(
    newcomer: Newcomer, *args: str, key: str | None = None
) -> subprocess.CompletedProcess[str]:
    """curl on the node machine, trusting only the node's CA, as the README does."""
    ca = newcomer.node.data / "certs" / "export" / "fognode-ca.crt"
    auth = ["-H", f"Authorization: Bearer {key}"] if key else []
    resolve = ["--resolve", "spezillmfog.local:8443:127.0.0.1"]
    return newcomer.node.curl("--cacert", str(ca), *resolve, *auth, *args)


def admin_key(newcomer: Newcomer) -> str:
    return (newcomer.node.data / "admin-api-key").read_text().strip()


def test_the_readme_curl_streams_the_embedded_model(newcomer: Newcomer, node: Served) -> None:
    said = node.log()
    assert "serving the embedded model smollm2:135m" in said  # no upstream named, no Ollama
    assert "listening on 127.0.0.1, port 8443 (https://127.0.0.1:8443)" in said
    if cores() > 1:
        assert f"with {cores()} worker processes" in said  # the default: one per core
    block = readme.block("CA=~/.local/share/fognode/certs/export/fognode-ca.crt")
    out = newcomer.node.run(block.text, timeout=90).stdout
    events = [line for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]", out[-2000:]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    deltas = [choice["delta"] for chunk in chunks for choice in chunk["choices"]]
    assert all(d.get("role") == "assistant" for d in deltas), deltas  # what the app needs
    assert "".join(d.get("content") or "" for d in deltas).strip()
    # The README shows the stream as it comes: its first chunk's shape is this one's.
    shown = [line for line in readme.README.read_text().splitlines() if line.startswith("data: {")]
    assert shown and list(json.loads(shown[0].removeprefix("data: "))) == list(chunks[0])


def test_the_status_page_over_tls_with_workers_shows_its_certificate(
    newcomer: Newcomer, node: Served
) -> None:
    """Issue item 2: with worker processes (the default) the page said 'TLS
    off' and hid the certificate rows. Every worker must show them: each
    request is a new connection, which the kernel spreads over the workers."""
    key = admin_key(newcomer)
    own = newcomer.node.data / "node-id"
    expected = f"fognode-{own.read_text().strip()[:8]}.local"
    for _ in range(6):
        page = curl(newcomer, "https://spezillmfog.local:8443/", key=key).stdout
        assert 'id="cert-names"' in page and expected in page, page[:3000]
        assert 'id="cert-expiry"' in page and 'id="ca-fingerprint"' in page
        assert "plain HTTP, development only" not in page
        # Issue item 3: no pull control on a node without Ollama, and why.
        assert 'id="pull-form"' not in page
        assert "embedded model" in page and "needs Ollama" in page


def test_fognode_models_on_the_embedded_node_says_pulls_need_ollama(
    newcomer: Newcomer, node: Served
) -> None:
    """Issue item 3: `fognode models list|pull` failed on the default node
    with 'The node answered 501 ... use the /v1 API'."""
    listed = newcomer.node.run(".venv/bin/fognode models list")
    assert "smollm2:135m" in listed.stdout
    assert "embedded model" in listed.stderr and "needs Ollama" in listed.stderr
    pulled = newcomer.node.run(".venv/bin/fognode models pull llama3.2:1b", check=False)
    assert pulled.returncode == 7, pulled.stderr
    assert "embedded model" in pulled.stderr and "needs Ollama" in pulled.stderr
    assert "Traceback" not in listed.stderr + pulled.stderr


def answered_by(node: Served, marker: str) -> dict[str, int]:
    """Which process answered the requests whose id starts with ``marker``,
    with which status (the access log: `w2 fognode.access [id] ... 401 ...`)."""
    found: dict[str, int] = {}
    for line in node.log().splitlines():
        hit = re.search(r" (w\d+) fognode\.access \[(" + marker + r"[^\]]*)\] .*\" (\d{3}) ", line)
        if hit:
            found[hit.group(2)] = int(hit.group(3))
            found[hit.group(1) + ":" + hit.group(3)] = 1
    return found


def ask_until(
    newcomer: Newcomer, node: Served, key: str, marker: str, status: int, limit: float = 20
) -> None:
    """Requests with ``key``, each on a new connection, until every worker has
    answered one with ``status`` (the limit only turns a hang into a failure)."""
    workers = [f"w{n}" for n in range(1, cores() + 1)] if cores() > 1 else []
    deadline = time.monotonic() + limit
    number = 0
    while True:
        for _ in range(4):
            number += 1
            probe = ["-o", "/dev/null", "-H", f"X-Request-ID: {marker}-{number}"]
            curl(newcomer, *probe, "https://spezillmfog.local:8443/v1/models", key=key)
        seen = answered_by(node, marker)
        everywhere = all(f"{w}:{status}" in seen for w in workers)
        if everywhere and seen.get(f"{marker}-{number}") == status:
            return
        assert time.monotonic() < deadline, f"{marker}: {seen}\n{node.log()[-3000:]}"


def test_a_key_made_and_one_revoked_reach_every_worker(newcomer: Newcomer, node: Served) -> None:
    """Issue item 4: an appended key was refused until a restart, and so was
    revoking one. Now `fognode apikey create|revoke` edit the file the node
    watches, and every worker follows within seconds."""
    made = newcomer.node.run(readme.command(".venv/bin/fognode apikey create phone", 0))
    key = re.search(r"fnk_[A-Za-z0-9_-]{40,}", made.stdout)
    assert key is not None, made.stdout
    assert "without a restart" in made.stdout
    started = node.proc.pid
    ask_until(newcomer, node, key.group(0), "phone-made", 200)
    assert "added phone" in node.log()

    revoked = newcomer.node.run(readme.command(".venv/bin/fognode apikey create phone", 1))
    assert "Revoked phone" in revoked.stdout
    ask_until(newcomer, node, key.group(0), "phone-revoked", 401)
    assert "removed phone" in node.log()
    assert node.proc.pid == started and node.proc.alive  # no restart
    assert key.group(0) not in node.log()  # never a key in the log


def test_chat_says_why_the_loopback_node_is_not_found_and_reaches_it_by_url(
    newcomer: Newcomer, node: Served
) -> None:
    """Issue item 8: against a node bound to 127.0.0.1, `fognode chat` said
    'No fog node found' with no hint, and had no way to name the node."""
    lost = newcomer.node.run(
        ".venv/bin/fognode chat hello --model smollm2:135m --timeout 1", check=False
    )
    assert lost.returncode == 3
    assert "listens on 127.0.0.1 only" in lost.stderr
    assert "fognode chat --url https://127.0.0.1:8443" in lost.stderr
    found = newcomer.node.run(
        ".venv/bin/fognode chat 'Say hi.' --model smollm2:135m --url https://127.0.0.1:8443 "
        '--ca ~/.local/share/fognode/certs/export/fognode-ca.crt --api-key "$KEY"',
        timeout=90,
        KEY=admin_key(newcomer),
    )
    assert found.stdout.strip(), found.stderr
