"""A private PostgreSQL server for the tests: initdb in a temporary directory,
listening on a free loopback port, stopped and deleted at the end.

Debian's ``postgresql`` package (installed by setup.sh) provides the
binaries; no cluster of the system is touched. PostgreSQL refuses to run as
root, so as root the server runs as the ``postgres`` system user (through
``runuser``) in a directory that user owns. Durability is switched off
(``fsync=off``): the tests are about the store's logic, not the disk.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.helpers import free_port


def postgres_bin_dir() -> Path | None:
    """The newest installed server's binaries (Debian keeps them per version)."""
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.user = "fognode"
        self.root = Path(tempfile.mkdtemp(prefix="fognode-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "run"
        self.as_user: list[str] = []
        self.initdb_seconds = 0.0
        self.startup_seconds = 0.0  # initdb and start, for CI's budget

    def _run(self, *cmd: str) -> None:
        subprocess.run(
            [*self.as_user, *cmd],
            check=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"},
            timeout=120,
        )

    def start(self) -> None:
        started = time.perf_counter()
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            self.root.chmod(0o755)
            for path in (self.root, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        self.initdb_seconds = time.perf_counter() - started
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.socket_dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        self.startup_seconds = time.perf_counter() - started

    async def new_database(self) -> str:
        """Create an empty database; its URL."""
        import asyncpg

        name = f"t_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url(name)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL server for the session (setup.sh installs it)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.fail("PostgreSQL is not installed: run ./setup.sh (it installs Debian's postgresql)")
    server = PostgresServer(bin_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> str:
    """A new, empty database on the session's server, for one test."""
    return await postgres_server.new_database()
