"""The client side of discovery, where it misled operators.

`fognode discover --watch` reported a node as changed ("~") a moment after
it appeared, with nothing changed: the node was only seen in its second
DNS-SD domain. `fognode chat` had no way to name a node, and finding none
said nothing about a node on this machine bound to loopback.
"""

from __future__ import annotations

from dataclasses import replace

from fognode.discovery.browser import Change, Changes, FogNode, _Groups
from fognode.discovery.chat import LocalNode, Target, nothing_found
from fognode.discovery.txt import NodeTxt


def announcement(domain: str, txt: NodeTxt) -> FogNode:
    kind = f"_https._tcp.{domain}"
    return FogNode(
        name=f"SpeziLLMFog Service.{kind}",
        service_type=kind,
        host="fognode-1a2b3c4d.local.",
        port=8443,
        addresses=("10.0.0.5",),
        txt=txt,
        domains=(domain,),
    )


def test_a_second_domain_is_not_a_change_to_tell_and_a_new_txt_is() -> None:
    txt = NodeTxt(node_id="1a2b3c4d", models=("smollm2:135m",))
    # Either domain may answer first.
    for first, second in (("local.", "spezillmfog.local."), ("spezillmfog.local.", "local.")):
        groups, changes = _Groups(), Changes()
        told = [e for e in groups.put(announcement(first, txt)) if changes.worth_telling(e)]
        assert [e.change for e in told] == [Change.ADDED]
        merged = groups.put(announcement(second, txt))
        # discover_all learns the second domain; a person watching hears nothing.
        assert set(merged[0].node.domains) == {"local.", "spezillmfog.local."}
        assert not [e for e in merged if changes.worth_telling(e)]
    busier = replace(txt, load_active=3)
    told = [e for e in groups.put(announcement("local.", busier)) if changes.worth_telling(e)]
    assert [e.change for e in told] == [Change.UPDATED]
    assert told[0].node.txt.load_active == 3


def test_a_node_named_by_url_is_checked_for_the_right_name() -> None:
    by_address = Target.of_url("https://127.0.0.1:8443", None)
    assert (by_address.base, by_address.name, by_address.tls) == (
        "https://127.0.0.1:8443/v1",
        "spezillmfog.local",
        True,
    )
    by_name = Target.of_url("fognode-1a2b3c4d.local:8443", None)
    assert by_name.base == "https://fognode-1a2b3c4d.local:8443/v1"
    assert by_name.name == "fognode-1a2b3c4d.local"
    plain = Target.of_url("http://127.0.0.1:8080/v1/", "spezillmfog.local")
    assert (plain.base, plain.tls) == ("http://127.0.0.1:8080/v1", False)


def test_finding_nothing_says_why_when_the_node_here_is_loopback_only() -> None:
    here = LocalNode("https://127.0.0.1:8443", loopback_only=True)
    said = nothing_found(3, here, "chat")
    assert "127.0.0.1 only" in said and "--host '*'" in said
    assert "fognode chat --url https://127.0.0.1:8443" in said
    assert "--url" in nothing_found(3, None, "chat")
