"""Two hosts on one machine: network namespaces joined by a veth pair.

Everything a test starts inside them talks only over the veth link (and
each namespace's own loopback), so multicast between them is real mDNS
traffic that never leaves the sandbox.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is missing; setup.sh installs it"
    probe = f"fnprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"the kernel refuses network namespaces here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    netns: str
    address: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def python(self, *argv: str) -> list[str]:
        return self.command(sys.executable, *argv)

    def fognode(self, *argv: str) -> list[str]:
        return self.python("-m", "fognode.gateway.cli", *argv)


@dataclass
class Lan:
    a: Host
    b: Host
    suffix: str

    @classmethod
    def create(cls, subnet: int) -> Lan:
        suffix = uuid.uuid4().hex[:6]
        ns_a, ns_b = f"fnA{suffix}", f"fnB{suffix}"
        veth_a, veth_b = f"fva{suffix}", f"fvb{suffix}"
        lan = cls(Host(ns_a, f"10.231.{subnet}.1"), Host(ns_b, f"10.231.{subnet}.2"), suffix)
        try:
            _ip("netns", "add", ns_a)
            _ip("netns", "add", ns_b)
            _ip("link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
            _ip("link", "set", veth_a, "netns", ns_a)
            _ip("link", "set", veth_b, "netns", ns_b)
            for host, veth in ((lan.a, veth_a), (lan.b, veth_b)):
                _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", veth)
                _ip("-n", host.netns, "link", "set", veth, "up", "multicast", "on")
                _ip("-n", host.netns, "link", "set", "lo", "up")
        except subprocess.CalledProcessError:
            lan.destroy()
            raise
        return lan

    def destroy(self) -> None:
        # Deleting a namespace also deletes the veth end inside it (and its peer).
        for host in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
