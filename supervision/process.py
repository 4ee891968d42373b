"""A child process's ties to its parent, and the CPUs the processes share."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Called first thing in a child: the kernel kills it when the thread
    that started it goes away (PR_SET_PDEATHSIG), so a parent killed with
    SIGKILL, or crashed, leaves no child behind holding memory and a port.
    Done in the child rather than in a ``preexec_fn``, which would run
    Python code between fork and exec in a parent that has threads."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before prctl took effect: then nobody would
    # signal us, so check once by hand.
    if os.getppid() != parent_pid:
        sys.exit(0)


def cores() -> int:
    """CPUs this process may run on (a container's or taskset's limit included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
