"""`fognode serve` with the embedded model, run as a user runs it, and what it started.

The test talks to it over real sockets and looks at its processes through
/proc, which is how an operator would check for a leftover llama.cpp server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.support.processes import NodeProcess

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


# `fognode serve` with the embedded model, as in FOGNODE_* settings.
EMBEDDED = {
    "tls": "false",
    "auth": "none",
    "upstream_kind": "embedded",
    "shutdown_timeout": "2",
    "embedded_context_size": "1024",
    # The child's own lines (llama.cpp's log) are logged at DEBUG.
    "log_level": "DEBUG",
}


def launch_embedded_node(
    directory: Path, env: dict[str, str] | None = None, *, ca: Path | None = None
) -> NodeProcess:
    """`fognode serve` serving the embedded model, launched; `wait_ready()`
    waits for the model. ``env``: FOGNODE_* variables over the defaults above.
    None of the runner's own FOGNODE_* settings leak in."""
    node = NodeProcess(directory, EMBEDDED, env=env, clean_env=True, ca=ca)
    node.launch()
    return node


def engine_url(node: NodeProcess) -> str:
    """The engine's own loopback URL (/readyz names it), to read its /slots."""
    resp = node.readyz()
    assert resp is not None
    return str(resp.json()["upstream"])


def llama_child(node: NodeProcess) -> int:
    """The one llama.cpp server the node runs."""
    children = llama_children(node.pid)
    assert len(children) == 1, children
    return children[0]
