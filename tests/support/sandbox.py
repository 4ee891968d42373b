"""Run this checkout's Python as another user, inside a private mount namespace.

The venv's interpreter may live under a directory other users cannot enter
(root's home, mode 700, with pyenv). Tests that run fognode as an
unprivileged user, the way a systemd unit or a container does, show that
user a traversable copy of just those paths: ``traversable`` returns the
mount commands (for a shell inside ``unshare --mount``).
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

from tests.support.processes import ROOT


def _first_closed(path: Path) -> Path | None:
    return next((d for d in reversed(path.parents) if not d.stat().st_mode & stat.S_IXOTH), None)


def traversable(directory: Path) -> str:
    """Shell commands (each ending in ``&& ``) that open the way to this
    venv's interpreter and to the checkout for any user; ``directory`` is
    where the shadow directories go (it must be traversable itself)."""
    python = Path(sys.executable)
    needed = (python.resolve(), python.parent, ROOT)
    # For each path the user needs, the first directory on it they may not enter.
    closed = {d for p in needed if (d := _first_closed(p)) is not None}
    mounts = ""
    for index, home in enumerate(sorted(closed)):
        shadow = directory / f"shadow{index}"
        shadow.mkdir(exist_ok=True)
        shadow.chmod(0o711)
        tops = {home / p.relative_to(home).parts[0] for p in needed if p.is_relative_to(home)}
        for top in sorted(tops):
            (shadow / top.name).mkdir(exist_ok=True)
            mounts += f"mount --bind {top} {shadow / top.name} && "
        mounts += f"mount --rbind {shadow} {home} && "
    return mounts
