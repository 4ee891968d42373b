"""Which usage store: SQLite on the node, or PostgreSQL shared by several nodes.

Apart from store.py (what every store answers) so that the two backends,
which build on store.py, are imported only by the one that picks them.
"""

from __future__ import annotations

from .options import StoreOptions
from .postgres_store import PostgresStore
from .sqlite_store import SqliteStore
from .store import UsageStore


def open_store(options: StoreOptions) -> UsageStore:
    """The backend the options ask for (not yet opened)."""
    if options.database_url is not None:
        return PostgresStore(options.database_url)
    assert options.sqlite_path is not None
    return SqliteStore(options.sqlite_path)
