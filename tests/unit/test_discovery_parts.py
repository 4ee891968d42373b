"""TXT records, node ranking, and mDNS failures that must not stop the gateway."""

from __future__ import annotations

import io

import ifaddr
import pytest
from zeroconf import IPVersion

from fognode.discovery.browser import FogNode
from fognode.discovery.choose import rank
from fognode.discovery.interfaces import mdns_addresses
from fognode.discovery.terminal import print_table
from fognode.discovery.txt import MAX_VALUE, NodeTxt
from fognode.gateway.auth_setup import build_authorizer
from fognode.gateway.config.settings import Settings
from fognode.gateway.node.announce import announced_addresses


def test_txt_round_trip_and_model_list_bounded() -> None:
    models = tuple(f"model-{i:03d}:7b-instruct-q4_K_M" for i in range(40))
    txt = NodeTxt(
        version="1.2.3",
        node_id="abc",
        models=models,
        load_active=3,
        load_capacity=8,
        auth="firebase+apikey",
        ca_sha256="AB" * 32,
    )
    props = txt.to_properties()
    assert all(len(f"{k}={v}".encode()) <= MAX_VALUE for k, v in props.items())
    assert props["nmodels"] == "40" and props["load"] == "3/8"
    back = NodeTxt.from_properties({k.encode(): v.encode() for k, v in props.items()})
    assert back.models == models[: len(back.models)] and 0 < len(back.models) < 40
    assert back.model_count == 40
    assert back.load_ratio == 3 / 8
    assert back.ca_sha256 == "AB" * 32
    assert back.has_model("model-000:7b-instruct-q4_K_M") is True
    assert back.has_model("model-039:7b-instruct-q4_K_M") is None  # cut: unknown
    assert NodeTxt(models=("llama3.2:latest",), model_count=1).has_model("llama3.2") is True
    assert NodeTxt(models=("a:1",), model_count=1).has_model("b:1") is False


def test_txt_hot_models_round_trip_and_unknown_when_not_announced() -> None:
    hot = tuple(f"hot-model-{i:03d}:70b-instruct-q4_K_M" for i in range(20))
    props = NodeTxt(models=hot, hot=hot).to_properties()
    assert len(f"hot={props['hot']}".encode()) <= MAX_VALUE and props["nhot"] == "20"
    back = NodeTxt.from_properties(props)
    assert back.hot == hot[: len(back.hot or ())] and back.hot_count == 20
    assert back.is_hot(hot[0]) is True and back.is_hot(hot[-1]) is None  # cut
    idle = NodeTxt.from_properties(NodeTxt(models=("a:1",), hot=()).to_properties())
    assert idle.hot == () and idle.is_hot("a:1") is False
    assert NodeTxt(hot=("llama3.2:latest",)).is_hot("llama3.2") is True
    # The reference node (Avahi) and older fognodes announce no `hot`: unknown.
    reference = NodeTxt.from_properties({b"models": b"a:1"})
    assert reference.hot is None and reference.is_hot("a:1") is None
    assert "hot" not in NodeTxt().to_properties()


def test_txt_from_foreign_or_broken_records() -> None:
    txt = NodeTxt.from_properties({b"load": b"x/y", b"nmodels": None, b"Path": b"/v1", b"z": b"1"})
    assert txt.load_active == 0 and txt.load_capacity == 0
    assert txt.extra == {"z": "1"}


def node(
    name: str,
    models: tuple[str, ...],
    active: int,
    capacity: int,
    hot: tuple[str, ...] | None = None,
) -> FogNode:
    return FogNode(
        name=f"{name}._http._tcp.local.",
        service_type="_http._tcp.local.",
        host="spezillmfog.local.",
        port=8080,
        addresses=("192.0.2.1",),
        txt=NodeTxt(
            models=models,
            model_count=len(models),
            hot=hot,
            load_active=active,
            load_capacity=capacity,
        ),
    )


async def test_ranking_by_model_then_load() -> None:
    busy_with_model = node("a", ("llama3.2:1b",), 7, 8)
    idle_with_model = node("b", ("llama3.2:1b",), 1, 8)
    idle_without = node("c", ("qwen2.5:0.5b",), 0, 8)
    ranked = await rank(
        [idle_without, busy_with_model, idle_with_model], model="llama3.2:1b", measure=False
    )
    assert [r.node.instance for r in ranked] == ["b", "a", "c"]
    assert ranked[-1].has_model is False


async def test_ranking_prefers_a_node_with_the_model_hot_then_load_then_rtt() -> None:
    model = "llama3.2:1b"
    busy_hot = node("busy-hot", (model, "qwen2.5:0.5b"), 6, 8, hot=(model,))
    idle_cold = node("idle-cold", (model, "qwen2.5:0.5b"), 0, 8, hot=("qwen2.5:0.5b",))
    idle_unknown = node("idle-unknown", (model,), 0, 8)  # says nothing about hot models
    idle_hot = node("idle-hot", (model,), 1, 8, hot=(model,))
    nodes = [idle_cold, idle_unknown, busy_hot, idle_hot]
    ranked = await rank(nodes, model=model, measure=False)
    assert [r.node.instance for r in ranked] == [
        "idle-hot",
        "busy-hot",
        "idle-unknown",
        "idle-cold",
    ]
    assert [r.hot for r in ranked] == [True, True, None, False]
    # The same load: the nearer node.
    twins = [node("far", (model,), 0, 8, hot=(model,)), node("near", (model,), 0, 8, hot=(model,))]
    rtts = {"far": 9.0, "near": 1.0}

    async def fake_rtt(n: FogNode, **_: object) -> float:
        return rtts[n.instance]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("fognode.discovery.choose.healthz_rtt", fake_rtt)
        ranked = await rank(twins, model=model)
    assert [r.node.instance for r in ranked] == ["near", "far"]


def test_the_table_shows_hot_models_in_a_column_of_their_own() -> None:
    out = io.StringIO()
    print_table(
        [
            node("a", ("llama3.2:1b", "qwen2.5:0.5b"), 1, 4, hot=("qwen2.5:0.5b",)),
            node("b", ("llama3.2:1b",), 0, 4),  # says nothing about hot models
        ],
        out,
    )
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert lines[0] == [
        "NAME",
        "ADDRESS",
        "MODELS",
        "HOT",
        "LOAD",
        "AUTH",
        "CA",
        "SHA-256",
        "VERSION",
    ]
    assert lines[1][:5] == [
        "a",
        "192.0.2.1:8080",
        "llama3.2:1b,qwen2.5:0.5b",
        "qwen2.5:0.5b",
        "1/4",
    ]
    assert lines[2][:5] == ["b", "192.0.2.1:8080", "llama3.2:1b", "?", "0/4"]


def test_announced_addresses_follow_the_bind_address() -> None:
    assert announced_addresses(Settings(host="127.0.0.1")) == []
    assert announced_addresses(Settings(host="127.0.0.1", mdns_include_loopback=True)) == [
        "127.0.0.1"
    ]
    assert announced_addresses(Settings(host="192.0.2.7")) == ["192.0.2.7"]
    assert announced_addresses(Settings(mdns_interfaces="192.0.2.8,2001:db8::8")) == [
        "192.0.2.8",
        "2001:db8::8",
    ]
    everything = announced_addresses(Settings(host="0.0.0.0"))
    assert all(":" not in a and not a.startswith("127.") for a in everything)
    # What the TXT record's `auth` says comes from the authorizer that was built.
    assert build_authorizer(Settings(auth="none")).kinds == "none"
    both = build_authorizer(Settings(firebase_project_id="p", api_keys="x:user:" + "0" * 64))
    assert both.kinds == "firebase+apikey"
    both.close()
    keys_only = build_authorizer(Settings(api_keys="x:user:" + "0" * 64, api_keys_file=None))
    assert keys_only.kinds == "apikey"
    keys_only.close()


def test_mdns_leaves_out_ipv6_loopback_where_no_multicast_can_go() -> None:
    """zeroconf's every-interface choice joins the IPv6 group on ::1, which
    logged 'Network is unreachable' at every start; IPv4 loopback stays."""
    lo = ifaddr.Adapter(
        "lo", "lo", [ifaddr.IP("127.0.0.1", 8, "lo"), ifaddr.IP(("::1", 0, 0), 128, "lo")], 1
    )
    eth = ifaddr.Adapter(
        "eth0",
        "eth0",
        [ifaddr.IP("192.168.1.20", 24, "eth0"), ifaddr.IP(("fe80::1", 0, 2), 64, "eth0")],
        2,
    )
    assert mdns_addresses([lo, eth]) == (["127.0.0.1", "192.168.1.20", "fe80::1"], IPVersion.All)
    assert mdns_addresses([lo]) == (["127.0.0.1"], IPVersion.V4Only)
    v6_only = ifaddr.Adapter("eth0", "eth0", [ifaddr.IP(("fd00::2", 0, 0), 64, "eth0")], 2)
    assert mdns_addresses([v6_only]) == (["fd00::2"], IPVersion.V6Only)
    assert mdns_addresses([]) is None
