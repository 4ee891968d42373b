"""Two hosts on one machine: network namespaces joined by a veth pair.

Everything a test starts inside them talks only over the veth link (and
each namespace's own loopback), so multicast between them is real mDNS
traffic that never leaves the sandbox.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import Process


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

    def attach(self, veth: str) -> None:
        """Give the host its address on ``veth`` (already moved into its namespace)."""
        _ip("-n", self.netns, "addr", "add", f"{self.address}/24", "dev", veth)
        _ip("-n", self.netns, "link", "set", veth, "up", "multicast", "on")
        _ip("-n", self.netns, "link", "set", "lo", "up")

    def dig(self, server: str, *question: str) -> str:
        """dig, an independent DNS client, asking ``server`` on the mDNS port
        (a legacy unicast query, answered by unicast)."""
        out = subprocess.run(
            self.command("dig", "-p", "5353", f"@{server}", *question, "+time=3", "+tries=2"),
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout


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
                host.attach(veth)
        except subprocess.CalledProcessError:
            lan.destroy()
            raise
        return lan

    def destroy(self) -> None:
        # Deleting a namespace also deletes the veth end inside it (and its peer).
        for host in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)


@dataclass
class Segment:
    """Several hosts on one Ethernet segment: a bridge in a namespace of its own
    (the switch), each host joined to it by a veth pair. Multicast floods to
    every port, as on a home LAN."""

    hosts: list[Host]
    switch: str

    @classmethod
    def create(cls, subnet: int, count: int) -> Segment:
        suffix = uuid.uuid4().hex[:6]
        segment = cls(
            [Host(f"fn{i}{suffix}", f"10.232.{subnet}.{i + 1}") for i in range(count)],
            f"fnS{suffix}",
        )
        try:
            _ip("netns", "add", segment.switch)
            _ip("-n", segment.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", segment.switch, "link", "set", "br0", "up")
            for index, host in enumerate(segment.hosts):
                _ip("netns", "add", host.netns)
                outer, inner = f"fs{index}{suffix}", f"fh{index}{suffix}"
                _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                _ip("link", "set", outer, "netns", segment.switch)
                _ip("link", "set", inner, "netns", host.netns)
                _ip("-n", segment.switch, "link", "set", outer, "master", "br0")
                _ip("-n", segment.switch, "link", "set", outer, "up")
                host.attach(inner)
        except subprocess.CalledProcessError:
            segment.destroy()
            raise
        return segment

    def destroy(self) -> None:
        for netns in (*(h.netns for h in self.hosts), self.switch):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def wait_http(host: Host, url: str, limit: float = 30, *, status: str | None = None) -> None:
    """Until ``url`` answers (with ``status``, if given) from inside ``host``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        out = subprocess.run(
            host.command("curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", url),
            capture_output=True,
            text=True,
        )
        code = out.stdout.strip()
        if code not in ("", "000") and status in (None, code):
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not come up in {host.netns}")


AVAHI_CONF = """\
[server]
use-ipv4=yes
use-ipv6=no
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000
[wide-area]
enable-wide-area=no
[publish]
disable-publishing=yes
"""

BUS_CONF = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


class Avahi:
    """Avahi, an mDNS implementation independent of python-zeroconf, on one host.

    avahi-browse talks to avahi-daemon over D-Bus, so the host gets a private
    bus of its own; the daemon runs in a private mount namespace with its own
    /run, so it neither needs nor disturbs a system daemon.
    """

    def __init__(self, host: Host, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        socket = directory / "bus"
        (directory / "bus.conf").write_text(BUS_CONF.format(socket=socket))
        (directory / "avahi.conf").write_text(AVAHI_CONF)
        self.env = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={socket}"}
        self.bus = Process(
            host.command(
                "dbus-daemon", f"--config-file={directory / 'bus.conf'}", "--nofork", "--nopidfile"
            )
        )
        deadline = time.monotonic() + 10
        while not socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.daemon = Process(
            host.command(
                "unshare",
                "--mount",
                "sh",
                "-c",
                "mount -t tmpfs tmpfs /run && exec avahi-daemon --no-drop-root --no-chroot "
                f"--no-rlimits -f {directory / 'avahi.conf'}",
            ),
            env=self.env,
        )
        for line in self.daemon.lines(time.monotonic() + 15):
            if "Server startup complete" in line:
                return
        raise AssertionError(f"avahi-daemon did not start: {self.daemon.log()}")

    def browse(self, service_type: str, domain: str) -> list[list[str]]:
        """Resolved services (`avahi-browse -rtp`): [interface, protocol, name, type,
        domain, host, address, port, txt...] for each."""
        out = subprocess.run(
            self.host.command("avahi-browse", "-d", domain, "-r", "-t", "-p", service_type),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        return [
            [
                re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1))), field)
                for field in line.split(";")[1:]
            ]
            for line in out.stdout.splitlines()
            if line.startswith("=")
        ]

    def resolve_host(self, name: str) -> list[str]:
        out = subprocess.run(
            self.host.command("avahi-resolve", "-4", "-n", name),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        return [line.split()[1] for line in out.stdout.splitlines() if line.strip()]

    def stop(self) -> None:
        self.daemon.stop()
        self.bus.stop()


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    """Two hosts on a veth pair, for the tests of one module."""
    lan = Lan.create(subnet=int(time.time()) % 200 + 20)
    yield lan
    lan.destroy()
