"""`fognode serve` with the embedded model, run as a user runs it, and what it started.

The test talks to it over real sockets and looks at its processes through
/proc, which is how an operator would check for a leftover llama.cpp server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.helpers import free_port

FOGNODE = [sys.executable, "-m", "fognode.gateway.cli"]
MODEL = "smollm2:135m"  # the packaged default
CHILD_MODULE = "fognode.embedded.child"


def process_state(pid: int) -> str | None:
    """The state letter from /proc (R, S, Z...), or None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped) does not count."""
    return process_state(pid) not in (None, "Z")


def llama_children(parent: int) -> list[int]:
    """Live llama.cpp server processes that fognode (``parent``) started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and CHILD_MODULE.encode() in cmdline and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def wait_for(predicate: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Poll a condition only the outside world shows (processes, ports, log lines).

    The limit only turns a hang into a failure; no test asserts on the time.
    """
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.05)


class FognodeProcess:
    def __init__(
        self, directory: Path, env: dict[str, str] | None = None, *, ca: Path | None = None
    ) -> None:
        self.ca = ca  # with TLS: the CA its certificate chains to
        self.port = free_port()
        self.log_path = directory / "fognode.log"
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FOGNODE_", "FIREBASE_", "GOOGLE_"))
        }
        self.env = {
            **base,
            "XDG_DATA_HOME": str(directory / "data"),
            "FOGNODE_HOST": "127.0.0.1",
            "FOGNODE_PORT": str(self.port),
            "FOGNODE_TLS": "false",
            "FOGNODE_AUTH": "none",
            "FOGNODE_MDNS": "false",
            "FOGNODE_UPSTREAM_KIND": "embedded",
            "FOGNODE_SHUTDOWN_TIMEOUT": "2",
            "FOGNODE_EMBEDDED_CONTEXT_SIZE": "1024",
            # The child's own lines (llama.cpp's log) are logged at DEBUG.
            "FOGNODE_LOG_LEVEL": "DEBUG",
            **(env or {}),
        }
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            [*FOGNODE, "serve"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        scheme = "https" if self.env["FOGNODE_TLS"] == "true" else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def readyz(self) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5, verify=False)
        except httpx.TransportError:
            return None

    def wait_ready(self, limit: float = 120.0) -> dict[str, object]:
        def ready() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"fognode exited:\n{self.log()[-3000:]}")
            resp = self.readyz()
            return resp is not None and resp.status_code == 200

        wait_for(ready, "fognode and its model to be ready", limit)
        resp = self.readyz()
        assert resp is not None
        body: dict[str, object] = resp.json()
        return body

    def engine(self) -> str:
        """The engine's own loopback URL (/readyz names it), to read its /slots."""
        resp = self.readyz()
        assert resp is not None
        return str(resp.json()["upstream"])

    def child(self) -> int:
        children = llama_children(self.pid)
        assert len(children) == 1, children
        return children[0]

    def stop(self, sig: int = signal.SIGTERM, limit: float = 30.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(limit)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode
