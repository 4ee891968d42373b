"""The SpeziLLMFog app against fognode, across a LAN this test builds.

A phone and two fog nodes in network namespaces joined by a bridge: real
mDNS between them, the nodes on port 443 (80 in development mode) as the app
insists, and on the phone tests/spezillmfog_client.py, which does what the
app's source does: browse `_https._tcp.spezillmfog.local.` for 100 ms and
pick at random, resolve by connecting, connect to the IP with
`Host: spezillmfog.local` and no SNI, trust only the bundled CA with the name
check, a new Firebase ID token per request, keep only `assistant` deltas,
map errors as LLMFogError does, give up after an idle timeout.

Tokens are real RS256 Firebase ID tokens minted with a local key whose key
set each node fetches from a server in its own namespace (the production
verification path of firebase-admin).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fognode.auth.api_keys import entry_for, new_key
from tests.support.embedded_node import MODEL as EMBEDDED_MODEL
from tests.support.netns import Avahi, Host, Segment, unavailable_reason, wait_http
from tests.support.ollama_standin import DEFAULT_REPLY, WIRE_FORMATS
from tests.support.pki import Pki, make_pki
from tests.support.processes import ROOT, NodeProcess, Process
from tests.support.tokens import PROJECT, SigningKey

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

KEYS_PORT = 8099


@pytest.fixture(scope="module")
def segment() -> Iterator[Segment]:
    segment = Segment.create(subnet=int(time.time()) % 200 + 20, count=3)
    yield segment
    segment.destroy()


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.make("fog-key-1")


@pytest.fixture(scope="module")
def contract_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    # Only the contract's name: the app connects by IP and checks this name.
    return make_pki(tmp_path_factory.mktemp("pki"), names=("spezillmfog.local",))


@dataclass
class Phone:
    host: Host
    tmp: Path
    key: SigningKey

    def use(
        self,
        *,
        ca: Path | None,
        model: str = "llama3.2:1b",
        claims: dict[str, Any] | None = None,
        address: str | None = None,
        idle_timeout: float = 10.0,
        tokens: list[str] | None = None,
    ) -> dict[str, Any]:
        """One generation by the app, on the phone; what the app would show."""
        token_file = self.tmp / f"tokens-{time.monotonic_ns()}"
        minted = tokens or [self.key.mint(**(claims or {"fog": True})) for _ in range(3)]
        token_file.write_text("\n".join(minted))
        argv = [
            "-m",
            "tests.support.spezillmfog_client",
            "Why is the sky blue?",
            "--model",
            model,
            "--tokens",
            str(token_file),
            "--interface",
            self.host.address,
            "--idle-timeout",
            str(idle_timeout),
            "--backoff",
            "0.05",
        ]
        if ca is not None:
            argv += ["--ca", str(ca)]
        if address is not None:
            argv += ["--address", address]
        out = subprocess.run(
            self.host.python(*argv), cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def found(self, ca: Path | None, tries: int = 20) -> dict[str, Any]:
        """The app's discovery, as a user would retry it while the node starts."""
        for _ in range(tries):
            outcome = self.use(ca=ca)
            if outcome.get("case") != "mDnsServicesNotFound":
                return outcome
            time.sleep(0.5)
        raise AssertionError(f"never discovered: {outcome}")


@pytest.fixture(scope="module")
def avahi(segment: Segment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Avahi]:
    daemon = Avahi(segment.hosts[0], tmp_path_factory.mktemp("avahi"))
    yield daemon
    daemon.stop()


@pytest.fixture
def phone(segment: Segment, signing_key: SigningKey, tmp_path: Path) -> Phone:
    return Phone(segment.hosts[0], tmp_path, signing_key)


def start_node(
    host: Host,
    procs: list[Process],
    contract_pki: Pki,
    key: SigningKey,
    data: Path,
    *,
    tls: bool = True,
    wire: str = "current",
    first_byte_delay: float = 0.0,
    env: dict[str, str] | None = None,
    embedded: bool = False,
) -> NodeProcess:
    """An Ollama stand-in (or, ``embedded``, no Ollama: fognode's own engine),
    Google's key set, and fognode on 443 (80), in one namespace."""
    data.mkdir(parents=True, exist_ok=True)
    (data / "keys.json").write_text(json.dumps({key.kid: key.cert_pem}))
    upstream = ["--upstream-url", "http://127.0.0.1:11434"]
    if embedded:
        upstream = []
        env = {"FOGNODE_UPSTREAM_KIND": "embedded", **(env or {})}
    else:
        procs.append(
            Process(
                host.python(
                    "-m",
                    "tests.support.ollama_standin",
                    "--port",
                    "11434",
                    "--wire",
                    wire,
                    "--first-byte-delay",
                    str(first_byte_delay),
                )
            )
        )
        wait_http(host, "http://127.0.0.1:11434/api/version")
    procs.append(
        Process(
            host.python(
                "-m", "http.server", str(KEYS_PORT), "--bind", "127.0.0.1", "--directory", str(data)
            )
        )
    )
    wait_http(host, f"http://127.0.0.1:{KEYS_PORT}/keys.json")
    port = "443" if tls else "80"
    node = NodeProcess(
        data,
        host=host,
        args=["--host", "*", "--port", port, *upstream, *([] if tls else ["--no-tls"])],
        env={
            "FOGNODE_CERTS_DIR": str(contract_pki.paths.directory),
            "FOGNODE_FIREBASE_PROJECT_ID": PROJECT,
            "FOGNODE_FIREBASE_CERTS_URL": f"http://127.0.0.1:{KEYS_PORT}/keys.json",
            "FOGNODE_REQUIRED_CLAIMS": '{"fog": true}',
            "FOGNODE_API_KEYS": "",
            "FOGNODE_API_KEYS_FILE": str(data / "no-api-keys"),
            "XDG_DATA_HOME": str(data),
            "FOGNODE_LOG_LEVEL": "INFO",
            **(env or {}),
        },
    )
    (data / "no-api-keys").write_text("")
    node.launch()
    procs.append(node)
    scheme = "https" if tls else "http"
    if embedded:  # until the model is loaded: the app would retry a 503 otherwise
        wait_http(host, f"{scheme}://127.0.0.1:{port}/readyz", 120, status="200")
    else:
        wait_http(host, f"{scheme}://127.0.0.1:{port}/healthz")
    return node


@pytest.mark.parametrize("wire", WIRE_FORMATS)
def test_the_app_finds_the_node_and_streams_the_whole_answer(
    segment: Segment,
    procs: list[Process],
    contract_pki: Pki,
    phone: Phone,
    tmp_path: Path,
    wire: str,
) -> None:
    node = segment.hosts[1]
    start_node(node, procs, contract_pki, phone.key, tmp_path / "node", wire=wire)
    outcome = phone.found(contract_pki.ca)
    assert outcome["ok"], outcome
    assert outcome["service"] == "SpeziLLMFog Service._https._tcp.spezillmfog.local."
    assert outcome["address"] == node.address
    assert f"POST https://{node.address}:443/v1/chat/completions" in outcome["log"]
    assert "".join(outcome["pieces"]) == DEFAULT_REPLY
    assert not outcome["ended_silently"] and outcome["attempts"] == 1

    # Once the node is known, the app's 100 ms browse finds it every time.
    misses = sum(
        phone.use(ca=contract_pki.ca).get("case") == "mDnsServicesNotFound" for _ in range(5)
    )
    print(f"\n100 ms browses that missed the node: {misses} of 5")
    assert misses == 0


def test_development_mode_on_port_80(
    segment: Segment, procs: list[Process], contract_pki: Pki, phone: Phone, tmp_path: Path
) -> None:
    node = segment.hosts[1]
    start_node(node, procs, contract_pki, phone.key, tmp_path / "node", tls=False)
    outcome = phone.found(None)
    assert outcome["ok"], outcome
    assert outcome["service"] == "SpeziLLMFog Service._http._tcp.spezillmfog.local."
    assert f"POST http://{node.address}:80/v1/chat/completions" in outcome["log"]
    assert "".join(outcome["pieces"]) == DEFAULT_REPLY


def test_two_nodes_each_resolve_to_their_own_address(
    segment: Segment,
    procs: list[Process],
    contract_pki: Pki,
    phone: Phone,
    avahi: Avahi,
    tmp_path: Path,
) -> None:
    first, second = segment.hosts[1], segment.hosts[2]
    start_node(first, procs, contract_pki, phone.key, tmp_path / "first")
    start_node(second, procs, contract_pki, phone.key, tmp_path / "second")
    served: set[str] = set()
    deadline = time.monotonic() + 60
    while served != {first.address, second.address} and time.monotonic() < deadline:
        outcome = phone.use(ca=contract_pki.ca)
        if outcome["ok"]:
            assert "".join(outcome["pieces"]) == DEFAULT_REPLY
            served.add(outcome["address"])
    assert served == {first.address, second.address}

    # fognode's own discovery: two nodes, each with its own name and address.
    listing = subprocess.run(
        phone.host.fognode("discover", "--json", "--timeout", "3"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    nodes = {n["addresses"][0]: n for n in json.loads(listing.stdout)}
    assert set(nodes) == {first.address, second.address}
    assert all(len(n["addresses"]) == 1 for n in nodes.values())
    assert nodes[first.address]["host"] != nodes[second.address]["host"]
    assert {n["name"] for n in nodes.values()} == {"SpeziLLMFog Service", "SpeziLLMFog Service-2"}

    # An independent DNS implementation: dig asks each node for its records.
    for node in (first, second):
        name = nodes[node.address]["host"]
        for domain in ("local", "spezillmfog.local"):
            dig = phone.host.dig(node.address, f"_https._tcp.{domain}", "PTR")
            assert f"._https._tcp.{domain}." in dig, dig
            assert re.search(rf"\sSRV\s+0 0 443 {re.escape(name)}\.", dig), dig
            addresses = re.findall(rf"^{re.escape(name)}\.\s+\d+\s+IN\s+A\s+(\S+)", dig, re.M)
            assert addresses == [node.address], dig

    # Avahi, another mDNS implementation, browsing where the app and where
    # generic tools look, and resolving each node's host name.
    for domain in ("spezillmfog.local", "local"):
        services = avahi.browse("_https._tcp", domain)
        seen = {(s[2], s[5], s[6]) for s in services}
        assert seen == {
            (nodes[a]["name"], nodes[a]["host"], a) for a in (first.address, second.address)
        }, services
    for node in (first, second):
        assert avahi.resolve_host(nodes[node.address]["host"]) == [node.address]


def test_the_app_streams_a_whole_answer_from_the_embedded_engine(
    segment: Segment, procs: list[Process], contract_pki: Pki, phone: Phone, tmp_path: Path
) -> None:
    """No Ollama on the node: llama.cpp's own server answers. It sends the
    role in the first chunk only (with a null content), the finish chunk with
    an empty delta, and closes its connection after each stream: the app
    keeps every generated token all the same, twice in a row."""
    node = segment.hosts[1]
    served = start_node(
        node,
        procs,
        contract_pki,
        phone.key,
        tmp_path / "node",
        embedded=True,
        # The engine's own lines, with its token counts, in the node's log.
        env={"FOGNODE_EMBEDDED_CONTEXT_SIZE": "1024", "FOGNODE_LOG_LEVEL": "DEBUG"},
    )
    for _ in range(2):
        outcome = phone.use(ca=contract_pki.ca, address=node.address, model=EMBEDDED_MODEL)
        assert outcome["ok"], outcome
        assert not outcome["ended_silently"] and outcome["attempts"] == 1
        text = "".join(outcome["pieces"])
        print(f"\nthe app, from the embedded engine: {text!r}")
        assert text.strip()
    log = "\n".join(served.lines(time.monotonic() + 2))
    generated = [int(n) for n in re.findall(r"\|\s+eval time =\s+[\d.]+ ms /\s+(\d+) tokens", log)]
    assert len(generated) == 2
    # Every token the engine generated reached the app as a piece it kept,
    # but the end-of-turn token that stopped it (counted, never text); a
    # token that ends inside a character arrives with the next one, so each
    # character beyond ASCII may take one piece fewer.
    pieces = len(outcome["pieces"])
    wide = sum(1 for c in "".join(outcome["pieces"]) if ord(c) > 127)
    assert generated[-1] - 1 - wide <= pieces <= generated[-1] - 1


def test_a_model_load_longer_than_the_apps_idle_timeout_does_not_drop_it(
    segment: Segment, procs: list[Process], contract_pki: Pki, phone: Phone, tmp_path: Path
) -> None:
    node = segment.hosts[1]
    heartbeats = {
        "FOGNODE_STREAM_HEARTBEAT_AFTER": "0.5",
        "FOGNODE_STREAM_HEARTBEAT_INTERVAL": "0.8",
    }
    start_node(
        node,
        procs,
        contract_pki,
        phone.key,
        tmp_path / "node",
        first_byte_delay=4.0,
        env=heartbeats,
    )
    outcome = phone.use(ca=contract_pki.ca, address=node.address, idle_timeout=2.0)
    assert outcome["ok"], outcome
    assert "".join(outcome["pieces"]) == DEFAULT_REPLY
    assert outcome["first_byte_after"] < 2.0  # headers came early, then heartbeats


def test_without_heartbeats_the_app_gives_up(
    segment: Segment, procs: list[Process], contract_pki: Pki, phone: Phone, tmp_path: Path
) -> None:
    """The control for the test above: the same wait, heartbeats only after 30 s."""
    node = segment.hosts[1]
    start_node(
        node,
        procs,
        contract_pki,
        phone.key,
        tmp_path / "node",
        first_byte_delay=4.0,
        env={"FOGNODE_STREAM_HEARTBEAT_AFTER": "30"},
    )
    outcome = phone.use(ca=contract_pki.ca, address=node.address, idle_timeout=2.0)
    assert outcome["case"] == "connectivityIssues", outcome
    assert outcome["attempts"] == 3  # the app retried, making the node's work longer


def test_each_error_reaches_the_app_as_it_maps_it(
    segment: Segment, procs: list[Process], contract_pki: Pki, phone: Phone, tmp_path: Path
) -> None:
    node = segment.hosts[1]
    proc = start_node(node, procs, contract_pki, phone.key, tmp_path / "node")
    at = {"ca": contract_pki.ca, "address": node.address}

    # 401: a token that does not verify; 403: one without the required claim.
    forged = phone.key.mint(fog=True)[:-8] + "AAAAAAAA"
    assert phone.use(**at, tokens=[forged])["case"] == "invalidAPIToken"
    assert phone.use(**at, claims={"fog": False})["case"] == "invalidAPIToken"

    # 404 for a missing model, in the words the app matches ...
    missing = phone.use(**at, model="phi4:14b")
    assert missing["case"] == "modelAccessError", missing
    assert "model 'phi4:14b' not found, try pulling it first" in missing["detail"]
    # ... which its pattern cannot match for names with '.' (a limit of the app).
    dotted = phone.use(**at, model="llama3.9:1b")
    assert dotted["case"] == "unknownError", dotted
    assert dotted["detail"].startswith("404 ")

    # A certificate from another CA: trust evaluation fails, retried, then given up.
    rogue = make_pki(tmp_path / "rogue", names=("spezillmfog.local",))
    untrusted = phone.use(ca=rogue.ca, address=node.address)
    assert untrusted["case"] == "connectivityIssues" and untrusted["attempts"] == 3

    # Anything else is "unknown" with status and body, after the retries for 5xx.
    procs[0].stop()  # the Ollama stand-in
    down = phone.use(**at)
    assert down["case"] == "unknownError" and down["detail"].startswith("502 "), down
    assert down["attempts"] == 3
    assert "Cannot reach the upstream" in down["detail"]
    assert proc.alive


def test_scoped_keys_and_budgets_reach_the_app_as_it_maps_them(
    segment: Segment, procs: list[Process], contract_pki: Pki, phone: Phone, tmp_path: Path
) -> None:
    """A study's app holds a key for one model, two requests a minute; the
    node runs two workers. What the app shows for each refusal is what
    DESIGN.md says it maps (401/403: invalid token; 429 retried, then an
    unknown error), and the usage endpoint tells it what is left first."""
    node = segment.hosts[1]
    data = tmp_path / "node"
    data.mkdir(parents=True)
    study, old = new_key(), new_key()
    (data / "api-keys").write_text(
        entry_for(study, "study", admin=False, models=("llama3.2:1b",), tier="study")
        + "\n"
        + entry_for(old, "old", admin=False, expires=time.time() - 60)
        + "\n"
    )
    start_node(
        node,
        procs,
        contract_pki,
        phone.key,
        data,
        env={
            "FOGNODE_WORKERS": "2",
            "FOGNODE_API_KEYS_FILE": str(data / "api-keys"),
            "FOGNODE_QUOTA_TIERS": json.dumps({"study": {"requests_per_minute": 2}}),
        },
    )
    at = {"ca": contract_pki.ca, "address": node.address}

    def usage() -> dict[str, Any]:
        out = subprocess.run(
            phone.host.command(
                "curl",
                "-sk",
                "-H",
                f"Authorization: Bearer {study}",
                f"https://{node.address}:443/v1/fognode/usage",
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
        return dict(json.loads(out.stdout))

    before = usage()
    assert (before["tier"], before["requests"]["remaining"]) == ("study", 2), before
    ok = phone.use(**at, tokens=[study] * 3)
    assert ok["ok"] and "".join(ok["pieces"]) == DEFAULT_REPLY, ok
    # A model outside the key's scope (403) and a key past its expiry (401): the
    # app's invalidAPIToken, at once (neither is retried).
    outside = phone.use(**at, model="qwen2.5:0.5b", tokens=[study] * 3)
    assert (outside["case"], outside["attempts"]) == ("invalidAPIToken", 1), outside
    assert "llama3.2:1b" in outside["detail"] and study not in outside["detail"]
    expired = phone.use(**at, tokens=[old] * 3)
    assert (expired["case"], expired["attempts"]) == ("invalidAPIToken", 1), expired
    assert "expired" in expired["detail"]
    # The refusals cost nothing; one request is left this minute, the node says.
    left = usage()
    assert left["requests"]["used"] == 1 and left["requests"]["remaining"] == 1, left
    assert 0 < left["requests"]["resets_in_seconds"] <= 60
    assert phone.use(**at, tokens=[study] * 3)["ok"]
    # Spent: the app retries the 429 (it does not read Retry-After) and gives up.
    spent = phone.use(**at, tokens=[study] * 3)
    assert spent["case"] == "unknownError" and spent["detail"].startswith("429 "), spent
    assert spent["attempts"] == 3
    assert usage()["requests"]["remaining"] == 0
