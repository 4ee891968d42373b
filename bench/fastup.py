"""The compiled upstream (bench/upstream/fastup.c): where it is built, and how.

The binary is kept in the cache under a name that carries a hash of its
source, so every worktree shares one build and an edited source is rebuilt.
Standard library only: bench/setup.sh runs this with the system Python.

    python3 -m bench.fastup --build     # prints the binary's path
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "upstream" / "fastup.c"
CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror")


class MissingTool(RuntimeError):
    """Something the bench needs is not installed; the message says what to run."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "fognode" / "bench"


def binary_path() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:12]
    return cache_dir() / f"fastup-{digest}"


def build(out: Path | None = None) -> Path:
    """Compile fastup.c (once per source version) and return the binary."""
    target = out or binary_path()
    if target.is_file() and os.access(target, os.X_OK):
        return target
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        raise MissingTool(
            "the bench's upstream is C and no compiler was found: install gcc "
            "(bash bench/setup.sh does)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + f".{os.getpid()}.tmp")
    result = subprocess.run(
        [cc, *CFLAGS, "-o", str(partial), str(SOURCE)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"building {SOURCE} failed:\n{result.stderr}")
    partial.replace(target)  # atomic: a concurrent build never sees half a file
    return target


def command(
    port: int, *, events: int = 16, paced_events: int = 20, paced_us: int = 10_000
) -> list[str]:
    """The command line that starts the upstream on 127.0.0.1:port."""
    return [
        str(build()),
        "--port",
        str(port),
        "--events",
        str(events),
        "--paced-events",
        str(paced_events),
        "--paced-us",
        str(paced_us),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="build it (if needed)")
    args = parser.parse_args()
    try:
        print(build() if args.build else binary_path())
    except MissingTool as exc:
        sys.exit(f"bench: {exc}")


if __name__ == "__main__":
    main()
