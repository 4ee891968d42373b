"""The running node's own account of where it serves, for the commands run beside it.

`fognode serve` writes ``<data dir>/running.json`` once it serves and
removes it when it stops. The operator's commands read it rather than
guess from their own settings, which may differ from the flags the node was
started with (`serve --host '*' --port 9000` leaves no trace in the
settings a later `fognode certs qr` loads): the QR code carries the link
the running page really serves, `fognode models` reaches the node where it
listens, `fognode chat` can say that the node on this machine listens on
loopback only. It holds nothing secret (addresses, ports, links), and is
written in one rename so that a reader never sees half of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .paths import data_dir

FILE_NAME = "running.json"


def running_file() -> Path:
    return data_dir() / FILE_NAME


@dataclass(frozen=True)
class RunningNode:
    pid: int  # the main process
    url: str  # where this machine reaches the API: https://127.0.0.1:8443
    bind: str  # the address it is bound to, as configured: `*`, 127.0.0.1
    port: int
    tls: bool
    lan_urls: tuple[str, ...]  # where the LAN reaches it (none: loopback only)
    onboarding: str | None  # the link the onboarding page's QR code carries, if it serves
    host_name: str | None  # its own mDNS host name (fognode-<id>.local), if announced
    workers: int

    @property
    def loopback_only(self) -> bool:
        return not self.lan_urls


def write_running(node: RunningNode, path: Path | None = None) -> Path:
    """Blocking: run it in a thread."""
    target = path or running_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".running.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(node), fh, indent=2)
        os.chmod(temp, 0o644)  # nothing secret; readable where the data dir is
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return target


def remove_running(pid: int, path: Path | None = None) -> None:
    """Remove the account, if it is still this process's (a node started
    since from the same data dir has written its own)."""
    target = path or running_file()
    found = _read(target)
    if found is not None and found.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()


def read_running(path: Path | None = None) -> RunningNode | None:
    """The node serving from this data dir, or None when none is (no file, or
    one a node that died without cleaning up left behind)."""
    found = _read(path or running_file())
    if found is None or not _alive(found.pid):
        return None
    return found


def _read(path: Path) -> RunningNode | None:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["lan_urls"] = tuple(raw.get("lan_urls") or ())
        return RunningNode(**raw)
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # none, unreadable, or of another version: as if none


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process (the service's): alive
    try:  # a pid reused by something else since
        return b"fognode" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
