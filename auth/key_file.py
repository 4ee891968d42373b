"""The API key file: one entry per line, edited by `fognode apikey`, watched by the node.

The file is the one place keys are added and revoked while a node runs: the
node looks at it every few seconds (:class:`KeyFileWatch`) and, when it
changed, reads and checks all of it before using any of it. A file that
does not parse changes nothing (the node keeps the keys it had and says
why), so a half-edited file never locks everyone out or lets a revoked key
back in. Edits from the command line replace the file in one rename, so the
node never reads half of one.

A file that does not exist holds no keys: a node may start before the first
key is made, and picks it up when it appears.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .api_keys import ApiKeyEntry

HEADER = (
    "# name:role:sha256 [models=m1,m2 expires=ISO-8601 tier=T class=C] (one API key per "
    "line); edit with: fognode apikey create|revoke\n"
)


@dataclass(frozen=True)
class Stamp:
    """What tells a replaced or edited file from the one read last: a rename
    gives a new inode, an edit in place a new mtime or size."""

    inode: int
    mtime_ns: int
    size: int


def stamp_of(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return Stamp(st.st_ino, st.st_mtime_ns, st.st_size)


def parse_lines(lines: list[str], where: str = "") -> list[ApiKeyEntry]:
    """Every entry of the lines, or ValueError naming the first bad one by its
    line (and no part of it but its name: a line may be a key pasted in by
    mistake)."""
    entries = []
    for number, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                entries.append(ApiKeyEntry.parse(line))
            except ValueError as exc:
                raise ValueError(f"{where or 'line'} {number}: {exc}".lstrip()) from None
    return unique(entries)


def unique(entries: list[ApiKeyEntry]) -> list[ApiKeyEntry]:
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            # Names are how keys are told apart in logs, usage and revocation.
            raise ValueError(f"two API keys are named {entry.name!r}")
        seen.add(entry.name)
    return entries


def read_entries(inline: Iterable[str], file: Path | None) -> list[ApiKeyEntry]:
    """The node's keys: the settings' own entries, then the file's. Blocking."""
    entries = parse_lines(list(inline), "FOGNODE_API_KEYS entry")
    if file is not None:
        with contextlib.suppress(FileNotFoundError):
            text = file.read_text(encoding="utf-8")
            entries += parse_lines(text.splitlines(), f"{file}, line")
    return unique(entries)


class KeyFile:
    """Edits of the key file, each written whole in one rename. Blocking.

    The new file keeps the old one's owner, group and mode: `sudo fognode
    apikey create` on a service's file must leave it readable by the
    service's user.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[ApiKeyEntry]:
        return read_entries((), self.path)

    def add(self, line: str) -> ApiKeyEntry:
        """Append an entry (``name:role:sha256hex``); refuse a name in use."""
        entry = ApiKeyEntry.parse(line)
        lines = self._lines()
        if any(e.name == entry.name for e in parse_lines(lines)):
            raise ValueError(
                f"an API key named {entry.name!r} exists already: revoke it first "
                f"(fognode apikey revoke {entry.name}) or choose another name"
            )
        self._write([*lines, line.strip()])
        return entry

    def revoke(self, name: str) -> ApiKeyEntry | None:
        """Remove the entry named ``name``; the one removed, or None."""
        lines = self._lines()
        parse_lines(lines)  # a file that does not parse is not rewritten
        kept, removed = [], None
        for line in lines:
            text = line.strip()
            if text and not text.startswith("#") and ApiKeyEntry.parse(text).name == name:
                removed = ApiKeyEntry.parse(text)
                continue
            kept.append(line)
        if removed is not None:
            self._write(kept)
        return removed

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return [HEADER.rstrip("\n")]

    def _write(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            old = self.path.stat()
        except FileNotFoundError:
            old = None
        fd, temp = tempfile.mkstemp(prefix=".api-keys.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            if old is not None:
                os.chmod(temp, old.st_mode & 0o7777)
                if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                    os.chown(temp, old.st_uid, old.st_gid)
            os.replace(temp, self.path)  # mkstemp made it 0600 otherwise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise


@dataclass(frozen=True)
class KeyChange:
    """What a look at the file found: the whole new set, and what differs."""

    entries: tuple[ApiKeyEntry, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]


class KeyFileWatch:
    """Looks at the key file; hands back the node's whole new set of keys
    (the settings' own entries, ``inline``, and the file's) when it changed.

    ``check`` is blocking (a stat, and a read when the stamp moved): callers
    run it in a thread. A file that cannot be read or does not parse raises
    (OSError, ValueError) once per change of the file, and none of it is
    used: the keys stay what they were.
    """

    def __init__(self, path: Path, inline: Iterable[str] = ()) -> None:
        self.path = path
        self.inline = tuple(inline)
        self._stamp = stamp_of(path)
        self.entries = tuple(read_entries(self.inline, path))

    def check(self) -> KeyChange | None:
        stamp = stamp_of(self.path)
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        entries = tuple(read_entries(self.inline, self.path))
        before = {e.name: e for e in self.entries}
        now = {e.name: e for e in entries}
        self.entries = entries
        changed = sorted(n for n in now if n in before and now[n] != before[n])
        added = tuple(sorted(set(now) - set(before)) + changed)
        removed = tuple(sorted(set(before) - set(now)) + changed)
        if not added and not removed:
            return None  # rewritten with the same keys
        return KeyChange(entries, added, removed)
