"""Where the CA key's passphrase comes from: never from the code.

In order: the FOGNODE_CA_PASSPHRASE environment variable, the file named by
FOGNODE_CA_PASSPHRASE_FILE (first line, e.g. a Docker secret), or a prompt
when a terminal is attached.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from .errors import CertError

ENV_VALUE = "FOGNODE_CA_PASSPHRASE"
ENV_FILE = "FOGNODE_CA_PASSPHRASE_FILE"
MIN_LENGTH = 12


def read_passphrase_file(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CertError(f"cannot read the CA passphrase file {path}: {exc.strerror}") from exc
    value = text.splitlines()[0] if text else ""
    if not value:
        raise CertError(f"the CA passphrase file {path} is empty")
    return value.encode()


def passphrase_configured() -> bool:
    """Whether the environment names the passphrase (then nothing else is tried)."""
    return bool(os.environ.get(ENV_VALUE) or os.environ.get(ENV_FILE))


def get_passphrase(
    *, file: Path | None = None, confirm: bool = False, interactive: bool | None = None
) -> bytes | None:
    """Return the passphrase, or None when none is configured and no one can be asked."""
    if file is not None:
        return read_passphrase_file(file)
    if os.environ.get(ENV_VALUE):
        return os.environ[ENV_VALUE].encode()
    if os.environ.get(ENV_FILE):
        return read_passphrase_file(Path(os.environ[ENV_FILE]))
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    if not interactive:
        return None
    first = getpass.getpass("CA key passphrase: ")
    if confirm:
        if len(first) < MIN_LENGTH:
            raise CertError(f"choose a passphrase of at least {MIN_LENGTH} characters")
        if getpass.getpass("Repeat the passphrase: ") != first:
            raise CertError("the two passphrases differ")
    return first.encode() if first else None


def check_strength(passphrase: bytes) -> None:
    if len(passphrase) < MIN_LENGTH:
        raise CertError(
            f"the CA passphrase is too short ({len(passphrase)} characters); "
            f"use at least {MIN_LENGTH}"
        )
