"""The real Firebase Auth Emulator (firebase-tools), started for the test session.

setup.sh caches firebase-tools under ~/.cache/fognode; this module starts
`firebase emulators:start --only auth` with a demo project (demo-* project
ids never reach Google) on free loopback ports, and talks to it the way an
app does: the Identity Toolkit REST API for sign-up and sign-in, which
returns real emulator ID tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import firebase_admin
import httpx
import pytest

from tests.support.helpers import free_port

FIREBASE_TOOLS_VERSION = "15.34.2"
PROJECT = "demo-fognode"


def firebase_binary() -> Path | None:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    binary = (
        cache
        / "fognode"
        / f"firebase-tools-{FIREBASE_TOOLS_VERSION}"
        / "node_modules"
        / ".bin"
        / "firebase"
    )
    if binary.exists():
        return binary
    found = shutil.which("firebase")
    return Path(found) if found else None


@dataclass
class SignedIn:
    uid: str
    id_token: str
    refresh_token: str
    email: str


class AuthEmulator:
    def __init__(self, binary: Path, project: str = PROJECT) -> None:
        self.binary = binary
        self.project = project
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="fognode-firebase-")
        self._proc: subprocess.Popen[bytes] | None = None
        self.log = Path(self._dir.name) / "emulator.log"
        self.http = httpx.Client(base_url=f"http://{self.host}", timeout=30)

    def start(self, timeout: float = 90) -> None:
        config = {
            "emulators": {
                "auth": {"host": "127.0.0.1", "port": self.port},
                "hub": {"host": "127.0.0.1", "port": free_port()},
                "logging": {"host": "127.0.0.1", "port": free_port()},
                "ui": {"enabled": False},
            }
        }
        workdir = Path(self._dir.name)
        (workdir / "firebase.json").write_text(json.dumps(config))
        env = dict(
            os.environ,
            CI="true",  # non-interactive
            FIREBASE_CLI_DISABLE_UPDATE_CHECK="true",
            NO_UPDATE_NOTIFIER="1",
            HOME=str(workdir),  # keep its config store out of the user's home
        )
        env.pop("FIREBASE_AUTH_EMULATOR_HOST", None)
        with self.log.open("wb") as out:
            self._proc = subprocess.Popen(
                [str(self.binary), "emulators:start", "--only", "auth", "--project", self.project],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the Auth Emulator exited:\n{self.log.read_text()}")
            try:
                if self.http.get("/").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"the Auth Emulator did not start in {timeout}s:\n{self.log.read_text()}"
        )

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self.http.close()
        self._dir.cleanup()

    # --- the REST API an app uses ------------------------------------------
    def _identity(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(
            f"/identitytoolkit.googleapis.com/v1/accounts:{method}",
            params={"key": "fake-key"},
            json=body,
        )
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def sign_up(self, email: str, password: str = "correct-horse-9") -> SignedIn:
        data = self._identity(
            "signUp", {"email": email, "password": password, "returnSecureToken": True}
        )
        return SignedIn(data["localId"], data["idToken"], data["refreshToken"], email)

    def sign_in(self, email: str, password: str = "correct-horse-9") -> SignedIn:
        data = self._identity(
            "signInWithPassword", {"email": email, "password": password, "returnSecureToken": True}
        )
        return SignedIn(data["localId"], data["idToken"], data["refreshToken"], email)

    def verify_email(self, uid: str) -> None:
        resp = self.http.post(
            f"/identitytoolkit.googleapis.com/v1/projects/{self.project}/accounts:update",
            json={"localId": uid, "emailVerified": True},
            headers={"Authorization": "Bearer owner"},
        )
        resp.raise_for_status()

    def clear(self) -> None:
        resp = self.http.delete(f"/emulator/v1/projects/{self.project}/accounts")
        resp.raise_for_status()


@pytest.fixture(scope="session")
def auth_emulator_session() -> Iterator[AuthEmulator]:
    binary = firebase_binary()
    if binary is None:
        pytest.fail("firebase-tools is not installed: run ./setup.sh (it caches the emulator)")
    emulator = AuthEmulator(binary)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def emulator(auth_emulator_session: AuthEmulator) -> AuthEmulator:
    auth_emulator_session.clear()
    return auth_emulator_session


@pytest.fixture
def admin_sdk(emulator: AuthEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """firebase-admin pointed at the emulator, as an operator's script would be."""
    monkeypatch.setenv("FIREBASE_AUTH_EMULATOR_HOST", emulator.host)
    app = firebase_admin.initialize_app(
        options={"projectId": PROJECT}, name=f"operator-{time.monotonic_ns()}"
    )
    yield app
    firebase_admin.delete_app(app)
