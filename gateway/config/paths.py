"""Where the node keeps its state on disk.

The settings name these as defaults; knowing the file system (and whether a
file exists yet) is kept out of the settings model itself.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Where setup.sh keeps the node's state: ~/.local/share/fognode (XDG_DATA_HOME)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "fognode"


def default_certs_dir() -> Path:
    return data_dir() / "certs"


def default_ca_dir() -> Path:
    return data_dir() / "ca"


def default_issuer_dir() -> Path:
    return data_dir() / "issuer"


def default_session_key_file() -> Path:
    """The key that signs the status page's session cookies (made at first start)."""
    return data_dir() / "session-key"


def default_api_keys_file() -> Path:
    """The key file setup.sh and `fognode apikey` write; the node watches it,
    so it may be made after the node started."""
    return data_dir() / "api-keys"


def admin_key_file() -> Path:
    """The admin API key setup.sh made (the key itself, 0600): what the sign-in
    form names and `fognode models` uses on the node."""
    return data_dir() / "admin-api-key"


def default_usage_file() -> Path:
    return data_dir() / "usage.sqlite3"
