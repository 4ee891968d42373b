"""The fog across a LAN this test builds: three nodes, phones that pick at random.

Network namespaces on one bridge: a phone namespace and one per node, real
mDNS between them, each node a real `fognode serve` (worker processes and
all) on port 443 with the fog's CA, mutual TLS between the nodes on their
peer ports, and an Ollama stand-in per node with its own models, speed and
load. The phones are tests/fog_phones.py: many app-faithful clients
(tests/spezillmfog_client.py: 100 ms browse, random pick, port 443, the
app's error cases), arriving one after another.

The fleet is uneven on purpose, as in issue 23's measurement: node a is
slow and takes one request at a time, with two models; b is fast with one
of them; c has a third. Without the fog (FOGNODE_FOG=off, the control) a
phone that picked the wrong node gets "model not found" and one that picked
a waits in its queue; with it, neither.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fognode.auth.api_keys import entry_for
from tests.netns import ROOT, Avahi, Host, Proc, Segment, unavailable_reason, wait_http
from tests.ollama_standin import DEFAULT_REPLY
from tests.pki import Pki, make_pki, node_certs_dir

REASON = unavailable_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.slow]

# Names the app's pattern can match ([\w:]+): its "model not found" case is countable.
M1, M2, M3 = "llama3:8b", "qwen2:1b", "gemma2:2b"
USER_KEY = "fnk_" + "p" * 43
ADMIN_KEY = "fnk_" + "o" * 43
KEYS = ",".join(
    [entry_for(USER_KEY, "phones", admin=False), entry_for(ADMIN_KEY, "operator", admin=True)]
)


@pytest.fixture(scope="module")
def lan() -> Iterator[Segment]:
    # phone, a, b, c, and a rogue's host
    segment = Segment.create(subnet=int(time.time() * 7) % 200 + 20, count=5)
    yield segment
    segment.destroy()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("fog-pki"), names=("spezillmfog.local",))


@pytest.fixture(scope="module")
def avahi(lan: Segment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Avahi]:
    daemon = Avahi(lan.hosts[0], tmp_path_factory.mktemp("avahi"))
    yield daemon
    daemon.stop()


@dataclass
class Spec:
    """One node of the fleet: its models and how its stand-in behaves."""

    name: str
    models: tuple[str, ...]
    loaded: tuple[str, ...] = ()
    token_delay: float = 0.02
    first_byte_delay: float = 0.0
    load_delay: float = 0.0
    slots: int = 4  # FOGNODE_MAX_CONCURRENT_REQUESTS
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Running:
    spec: Spec
    host: Host
    node: Proc
    data: Path

    def fognode(self, *argv: str) -> dict[str, Any]:
        """`fognode ...` in the node's namespace (with its settings and admin key)."""
        out = subprocess.run(
            self.host.fognode(*argv),
            cwd=ROOT,
            env={**_env(self.spec, self.data), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.startswith("{") else {"out": out.stdout}

    def log(self) -> str:
        return self.node.log.decode(errors="replace")


def _env(spec: Spec, data: Path) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "FOGNODE_HOST": "*",
        "FOGNODE_PORT": "443",
        "FOGNODE_UPSTREAM_URL": "http://127.0.0.1:11434",
        "FOGNODE_CERTS_DIR": str(data / "certs"),
        "FOGNODE_API_KEYS": KEYS,
        "FOGNODE_API_KEYS_FILE": str(data / "no-api-keys"),
        "XDG_DATA_HOME": str(data),
        "FOGNODE_LOG_LEVEL": "INFO",
        "FOGNODE_MAX_CONCURRENT_REQUESTS": str(spec.slots),
        # Every phone is one user here: no per-user cap gets in the way.
        "FOGNODE_PER_USER_CONCURRENT_REQUESTS": "100",
        "FOGNODE_PER_USER_QUEUED_REQUESTS": "100",
        "FOGNODE_FOG_REFRESH_SECONDS": "1",
        **spec.env,
    }


def start(host: Host, spec: Spec, procs: list[Proc], pki: Pki, tmp: Path) -> Running:
    data = tmp / spec.name
    node_certs_dir(pki, data / "certs", spec.name)
    (data / "no-api-keys").write_text("")
    (data / "fognode").mkdir(parents=True, exist_ok=True)
    (data / "fognode" / "admin-api-key").write_text(ADMIN_KEY + "\n")
    standin = [
        "-m",
        "tests.ollama_standin",
        "--port",
        "11434",
        "--models",
        ",".join(spec.models),
        "--token-delay",
        str(spec.token_delay),
        "--first-byte-delay",
        str(spec.first_byte_delay),
        "--load-delay",
        str(spec.load_delay),
        *(arg for model in spec.loaded for arg in ("--loaded", model)),
    ]
    procs.append(Proc(host.python(*standin)))
    wait_http(host, "http://127.0.0.1:11434/api/version")
    node = Proc(host.fognode("serve"), env=_env(spec, data))
    procs.append(node)
    wait_http(host, "https://127.0.0.1:443/healthz")
    return Running(spec, host, node, data)


def members(node: Running, count: int, limit: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        view = node.fognode("fog", "--json")
        if len(view["members"]) == count or time.monotonic() > deadline:
            assert len(view["members"]) == count, (view, node.log()[-3000:])
            return view
        time.sleep(0.5)


def run_phones(
    phone: Host, pki: Pki, mix: str, *, rate: float, **more: str
) -> list[dict[str, Any]]:
    argv = [
        "-m",
        "tests.fog_phones",
        "--ca",
        str(pki.ca),
        "--token",
        USER_KEY,
        "--interface",
        phone.address,
        "--mix",
        mix,
        "--rate",
        str(rate),
        "--backoff",
        "0.2",
    ]
    for key, value in more.items():
        argv += [f"--{key.replace('_', '-')}", value]
    out = subprocess.run(phone.python(*argv), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def summary(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = [o["first_token_after"] for o in outcomes if o["ok"] and o["first_token_after"]]
    return {
        "requests": len(outcomes),
        "ok": sum(o["ok"] for o in outcomes),
        "model_not_found": sum(o.get("case") == "modelAccessError" for o in outcomes),
        "other_failures": sum(
            not o["ok"] and o.get("case") != "modelAccessError" for o in outcomes
        ),
        "ttft_p50": round(percentile(ttft, 50), 2) if ttft else None,
        "ttft_p95": round(percentile(ttft, 95), 2) if ttft else None,
        "by_node": {
            address: sum(o.get("address") == address for o in outcomes)
            for address in sorted({str(o.get("address")) for o in outcomes})
        },
    }


FLEET = (
    # Slow and busy, two models (one request at a time, a token every 0.2 s).
    Spec("a", (M1, M2), loaded=(M1, M2), token_delay=0.2, slots=1),
    # Fast, one of them.
    Spec("b", (M1,), loaded=(M1,)),
    # A third model.
    Spec("c", (M3,), loaded=(M3,)),
)
MIX = f"{M1}=45,{M2}=3,{M3}=12"  # 60 phones


def fleet(lan: Segment, procs: list[Proc], pki: Pki, tmp: Path, *, fog: bool) -> list[Running]:
    env = {} if fog else {"FOGNODE_FOG": "off"}
    nodes = [
        start(lan.hosts[i + 1], Spec(**{**s.__dict__, "env": {**s.env, **env}}), procs, pki, tmp)
        for i, s in enumerate(FLEET)
    ]
    if fog:
        for node in nodes:
            members(node, 2)
    return nodes


def stop(procs: list[Proc]) -> None:
    for proc in reversed(procs):
        proc.stop()
    procs.clear()


def test_the_fog_serves_every_model_some_member_has_and_cuts_the_wait(
    lan: Segment, procs: list[Proc], pki: Pki, tmp_path: Path
) -> None:
    phone = lan.hosts[0]
    fleet(lan, procs, pki, tmp_path / "control", fog=False)
    time.sleep(2)  # the announcements settle in the phones' caches
    control = run_phones(phone, pki, MIX, rate=4)
    stop(procs)
    nodes = fleet(lan, procs, pki, tmp_path / "fog", fog=True)
    time.sleep(2)
    fogged = run_phones(phone, pki, MIX, rate=4)
    before, after = summary(control), summary(fogged)
    print(f"\ncontrol (FOGNODE_FOG=off): {json.dumps(before)}\nfog: {json.dumps(after)}")
    # Every phone's node was one of the three.
    assert {o.get("address") for o in fogged} <= {n.host.address for n in nodes}
    # The control shows the app's failures; with the fog there are none.
    assert before["model_not_found"] > 0
    assert after["model_not_found"] == 0 and after["other_failures"] == 0, fogged
    assert all(o["text"] == DEFAULT_REPLY for o in fogged)
    # Under uneven load, the wait for a first token: at most half the control's p95.
    assert after["ttft_p95"] <= before["ttft_p95"] / 2, (before, after)
