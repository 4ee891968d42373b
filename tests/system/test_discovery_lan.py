"""mDNS between two hosts: a fog node in one network namespace, clients in another.

Real multicast over a veth pair: the node announces with zeroconf, the
discovery CLI finds it from the other namespace, dig (an independent DNS
implementation) sees the same records, the TXT record follows a model pull,
and goodbye packets make the node vanish when it stops.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from fognode.auth.api_keys import entry_for, new_key
from fognode.certs.inspect import fingerprint
from fognode.certs.store import load_certs
from tests.support.netns import Lan, unavailable_reason, wait_http
from tests.support.ollama_standin import DEFAULT_REPLY
from tests.support.pki import make_pki
from tests.support.processes import ROOT, NodeProcess, Process

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

PORT = 8443


@pytest.fixture
def node_files(tmp_path: Path) -> dict[str, Any]:
    pki = make_pki(tmp_path / "pki", names=("spezillmfog.local", "localhost"))
    admin_key = new_key()
    return {
        "pki": pki,
        "key": admin_key,
        "dir": tmp_path,
        "env": {
            "FOGNODE_CERTS_DIR": str(pki.paths.directory),
            "FOGNODE_API_KEYS": entry_for(admin_key, "lan-test", admin=True),
            "FOGNODE_MDNS_REFRESH_INTERVAL": "0.5",
            "FOGNODE_MDNS_MIN_UPDATE_INTERVAL": "0.5",
            "FOGNODE_LOG_LEVEL": "INFO",
            "XDG_DATA_HOME": str(tmp_path / "data"),
        },
    }


def start_node(
    lan: Lan,
    procs: list[Process],
    files: dict[str, Any],
    *,
    port: int = PORT,
    standin: bool = True,
    loaded: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> NodeProcess:
    if standin:
        in_memory = [arg for name in loaded for arg in ("--loaded", name)]
        procs.append(
            Process(
                lan.a.python("-m", "tests.support.ollama_standin", "--port", "11434", *in_memory)
            )
        )
        wait_http(lan.a, "http://127.0.0.1:11434/api/version")
    node = NodeProcess(
        files["dir"],
        host=lan.a,
        args=["--host", "*", "--port", str(port), "--upstream-url", "http://127.0.0.1:11434"],
        env={**files["env"], **(extra_env or {})},
    )
    node.launch()
    procs.append(node)
    return node


def discover_json(lan: Lan, timeout: float = 3) -> list[dict[str, Any]]:
    out = subprocess.run(
        lan.b.fognode("discover", "--json", "--timeout", str(timeout)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return list(json.loads(out.stdout or "[]"))


def test_node_is_discovered_with_its_txt_and_seen_by_dig(
    lan: Lan, procs: list[Process], node_files: dict[str, Any]
) -> None:
    started = time.monotonic()
    start_node(lan, procs, node_files, loaded=("llama3.2:1b",))
    nodes: list[dict[str, Any]] = []
    while not nodes and time.monotonic() - started < 30:
        nodes = discover_json(lan, timeout=1)
    found_after = time.monotonic() - started
    # A one-second browse can end between the answers for the two domains when
    # the machine is busy (the CLI's own start-up eats into it): browse again,
    # still bounded, until the node is seen in both or the time is up.
    while nodes and len(nodes[0]["domains"]) < 2 and time.monotonic() - started < 30:
        nodes = discover_json(lan, timeout=3)
    print(f"\nstart to discovery: {found_after:.2f}s")
    assert len(nodes) == 1, nodes
    node = nodes[0]
    assert node["name"] == "SpeziLLMFog Service"
    assert node["service_type"] == "_https._tcp.local."
    # Found in both domains, shown once.
    assert node["domains"] == ["local.", "spezillmfog.local."]
    # Its own host name (from its node id), not one shared by every node.
    assert node["host"] == f"fognode-{node['txt']['node_id'][:8]}.local"
    assert node["addresses"] == [lan.a.address]
    assert node["port"] == PORT
    txt = node["txt"]
    assert txt["path"] == "/v1"
    assert txt["models"] == ["llama3.2:1b", "nomic-embed-text:latest", "qwen2.5:0.5b"]
    assert txt["hot"] == ["llama3.2:1b"] and txt["hot_count"] == 1  # Ollama's /api/ps
    assert txt["load_capacity"] > 0 and txt["load_active"] == 0
    assert txt["auth"] == "apikey"
    ca = load_certs(node_files["pki"].ca, "ca")[0]
    assert txt["ca_sha256"] == fingerprint(ca, colons=False)

    # An independent DNS implementation: a legacy unicast query to port 5353.
    dig = lan.b.dig(lan.a.address, "_https._tcp.local", "PTR")
    assert "SpeziLLMFog\\032Service._https._tcp.local." in dig, dig
    host = re.escape(node["host"])
    assert re.search(rf"\sSRV\s+0 0 {PORT} {host}\.", dig), dig
    assert re.search(rf"{host}\..*\sA\s+{re.escape(lan.a.address)}", dig)
    assert '"ca=' in dig and '"models=llama3.2:1b,' in dig and '"hot=llama3.2:1b"' in dig

    # The table a person reads: the hot models have a column of their own.
    shown = subprocess.run(
        lan.b.fognode("discover", "--timeout", "3"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    table = shown.stdout.splitlines()
    assert table, shown.stderr
    assert table[0].split()[:5] == ["NAME", "ADDRESS", "MODELS", "HOT", "LOAD"], table
    assert "llama3.2:1b,nomic-embed-text:latest,qwen2.5:0.5b  llama3.2:1b " in table[1], table


def test_chat_cli_finds_the_node_and_streams_with_the_ca_pinned(
    lan: Lan, procs: list[Process], node_files: dict[str, Any], tmp_path: Path
) -> None:
    start_node(lan, procs, node_files)
    wait_http(lan.b, f"https://{lan.a.address}:{PORT}/healthz")
    ca = str(node_files["pki"].ca)

    def chat(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            lan.b.fognode("chat", "Why is the sky blue?", "--timeout", "3", *extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = chat("--model", "llama3.2:1b", "--ca", ca, "--api-key", node_files["key"])
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == DEFAULT_REPLY
    assert f"Using SpeziLLMFog Service at https://{lan.a.address}:{PORT}" in ok.stderr
    assert "Looking for fog nodes" in ok.stderr  # the progress indication

    missing = chat("--model", "nope:7b", "--ca", ca, "--api-key", node_files["key"])
    assert missing.returncode == 6 and "not on this node" in missing.stderr

    refused = chat("--model", "llama3.2:1b", "--ca", ca, "--api-key", "fnk_wrong")
    assert refused.returncode == 5 and "401" in refused.stderr

    rogue = make_pki(tmp_path / "rogue")
    wrong_ca = chat("--model", "llama3.2:1b", "--ca", str(rogue.ca), "--api-key", node_files["key"])
    assert wrong_ca.returncode == 4 and "CA" in wrong_ca.stderr


def test_txt_update_on_model_pull_and_goodbye_on_shutdown(
    lan: Lan, procs: list[Process], node_files: dict[str, Any]
) -> None:
    watcher = Process(lan.b.fognode("discover", "--watch", "--json"))
    procs.append(watcher)
    node = start_node(lan, procs, node_files)
    launched = time.monotonic()
    events = watcher.lines(time.monotonic() + 30)
    added = json.loads(next(line for line in events if line.startswith("{")))
    print(
        f"\nnode process start to the watcher's 'added' event: {time.monotonic() - launched:.2f}s"
    )
    assert added["event"] == "added"
    assert "llama3.1:8b" not in added["txt"]["models"]

    # Pull a model through the node (admin key); the TXT record follows.
    wait_http(lan.b, f"https://{lan.a.address}:{PORT}/healthz")
    pulled = subprocess.run(
        lan.b.command(
            "curl",
            "-sS",
            "--cacert",
            str(node_files["pki"].ca),
            "--resolve",
            f"spezillmfog.local:{PORT}:{lan.a.address}",
            "-H",
            f"Authorization: Bearer {node_files['key']}",
            "-d",
            '{"model": "llama3.1:8b", "stream": false}',
            f"https://spezillmfog.local:{PORT}/api/pull",
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json.loads(pulled.stdout) == {"status": "success"}, pulled.stderr
    updated = None
    for line in watcher.lines(time.monotonic() + 30):
        event = json.loads(line)
        if event["event"] == "updated" and "llama3.1:8b" in event["txt"]["models"]:
            updated = event
            break
    assert updated is not None, watcher.log()

    stopped_at = time.monotonic()
    assert node.stop() == 0
    removed = None
    for line in watcher.lines(time.monotonic() + 30):
        event = json.loads(line)
        if event["event"] == "removed":
            removed = event
            break
    gone_after = time.monotonic() - stopped_at
    print(f"\nshutdown to disappearance: {gone_after:.2f}s")
    assert removed is not None, node.log() + watcher.log()
    assert removed["name"] == "SpeziLLMFog Service"
    # Goodbye packets, not the 75-minute TTL, made it disappear.
    assert gone_after < 60


INSTANCE = re.compile(r"SpeziLLMFog Service(-[2-9])?")


def test_two_nodes_started_together_get_distinct_instances(
    lan: Lan, procs: list[Process], node_files: dict[str, Any]
) -> None:
    """Both find the name free and take it; a moment later one hears the
    other and moves to `-2` (two that hear each other at the same moment may
    both move on, to `-2` and `-3`: what counts is two distinct instances of
    the one name the app browses, each announcing its own port)."""
    procs.append(Process(lan.a.python("-m", "tests.support.ollama_standin", "--port", "11434")))
    wait_http(lan.a, "http://127.0.0.1:11434/api/version")
    nodes = []
    for index, port in enumerate((PORT, PORT + 1)):
        env = dict(node_files["env"], XDG_DATA_HOME=node_files["env"]["XDG_DATA_HOME"] + str(index))
        args = ["--host", "*", "--port", str(port), "--upstream-url", "http://127.0.0.1:11434"]
        workdir = node_files["dir"] / f"node{index}"
        workdir.mkdir()
        nodes.append(NodeProcess(workdir, host=lan.a, args=args, env=env))
        nodes[-1].launch()
    procs.extend(nodes)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        found = discover_json(lan, timeout=2)
        names = {n["name"] for n in found}
        if len(names) == 2 and all(INSTANCE.fullmatch(name) for name in names):
            break
    names = {n["name"] for n in found}
    assert len(names) == 2 and all(INSTANCE.fullmatch(name) for name in names), found
    assert {n["port"] for n in found} == {PORT, PORT + 1}
    assert len({n["host"] for n in found}) == 2
    assert all(node.alive for node in nodes)


def test_http_client_sees_the_node_port_and_ip_via_discovery_library(
    lan: Lan, procs: list[Process], node_files: dict[str, Any]
) -> None:
    """The library, not the CLI: discover() yields typed nodes to build a client on."""
    start_node(lan, procs, node_files)
    script = (
        "import asyncio, json\n"
        "from fognode.discovery.browser import discover_all\n"
        "nodes = asyncio.run(discover_all(4))\n"
        "print(json.dumps([[n.url(), n.host_name, n.txt.has_model('llama3.2:1b')] "
        "for n in nodes]))\n"
    )
    deadline = time.monotonic() + 30
    found: list[Any] = []
    while not found and time.monotonic() < deadline:
        out = subprocess.run(
            lan.b.python("-c", script), cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        found = json.loads(out.stdout or "[]")
    assert len(found) == 1
    url, host, has_model = found[0]
    assert url == f"https://{lan.a.address}:{PORT}" and has_model is True
    assert re.fullmatch(r"fognode-[0-9a-f]{8}\.local", host), host
    # And the URL it gives works with Host set and the CA pinned.
    response = subprocess.run(
        lan.b.command(
            "curl",
            "-sS",
            "--cacert",
            str(node_files["pki"].ca),
            "--resolve",
            f"spezillmfog.local:{PORT}:{lan.a.address}",
            f"https://spezillmfog.local:{PORT}/healthz",
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json.loads(response.stdout)["status"] == "ok"


def test_a_node_with_two_workers_is_announced_once(
    lan: Lan, procs: list[Process], node_files: dict[str, Any]
) -> None:
    """Two processes serve the port; the supervisor alone announces, with the
    node's capacity (a worker announcing too would show as a second
    instance, `-2`, or as twice the capacity)."""
    start_node(lan, procs, node_files, extra_env={"FOGNODE_WORKERS": "2"})
    wait_http(lan.b, f"https://{lan.a.address}:{PORT}/healthz")
    nodes: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while not nodes and time.monotonic() < deadline:
        nodes = discover_json(lan, timeout=1)
    # Looked at again after a while: a late second announcer would be there now.
    nodes = discover_json(lan, timeout=3)
    assert [n["name"] for n in nodes] == ["SpeziLLMFog Service"], nodes
    assert nodes[0]["port"] == PORT
    assert nodes[0]["txt"]["load_capacity"] == 4  # FOGNODE_MAX_CONCURRENT_REQUESTS' default
    assert "llama3.2:1b" in nodes[0]["txt"]["models"]
