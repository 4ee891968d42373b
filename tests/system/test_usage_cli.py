"""`fognode usage` on PostgreSQL: the installed command, in a process of its own."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from fognode.usage.options import StoreOptions
from tests.support.postgres import PostgresServer
from tests.support.usage import RANGE, populate


def test_the_installed_command_on_postgres(postgres_server: PostgresServer) -> None:
    url = asyncio.run(postgres_server.new_database())
    populate(StoreOptions(database_url=url))
    fognode = Path(sys.executable).with_name("fognode")
    done = subprocess.run(
        [str(fognode), "usage", "--database-url", url, *RANGE, "--by", "model", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    totals = json.loads(done.stdout)["totals"]
    assert [(t["model"], t["requests"], t["total_tokens"]) for t in totals] == [
        ("a", 2, 1003),
        ("b", 1, 30),
    ]
