"""The `fognode` command as a process: exit codes, masked secrets, a serving
process that logs JSON and stops on SIGTERM, refusals at start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import aiohttp

from tests.support.helpers import free_port
from tests.support.ollama_standin import OllamaStandIn
from tests.support.processes import FOGNODE, NodeProcess


def test_cli_help_and_bad_settings_exit_codes() -> None:
    out = subprocess.run([*FOGNODE, "serve", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "--upstream-url" in out.stdout and "--config" in out.stdout
    bad = subprocess.run([*FOGNODE, "serve", "--port", "99999"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "invalid settings" in bad.stderr and "port" in bad.stderr
    missing = subprocess.run(
        [*FOGNODE, "serve", "--config", "/nonexistent.toml"], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "config file not found" in missing.stderr


def test_cli_config_masks_secrets() -> None:
    env = dict(os.environ, FOGNODE_UPSTREAM_API_KEY="sk-secret")
    out = subprocess.run([*FOGNODE, "config"], capture_output=True, text=True, env=env)
    assert out.returncode == 0
    data = json.loads(out.stdout)
    assert data["upstream_api_key"] == "***"
    assert "sk-secret" not in out.stdout


async def test_fognode_serve_process_serves_logs_json_and_stops_on_sigterm(
    standin: OllamaStandIn, tmp_path: Path
) -> None:
    port = free_port()
    node = NodeProcess(
        tmp_path,
        args=[
            "--no-tls",
            "--auth",
            "none",
            "--port",
            str(port),
            "--upstream-url",
            standin.url,
            "--log-format",
            "json",
        ],
        env={"FOGNODE_SHUTDOWN_TIMEOUT": "2"},
        port=port,
    )
    await node.start()
    try:
        url = f"http://127.0.0.1:{port}"
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": "llama3.2:1b",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                headers={"X-Request-ID": "proc-1"},
            ) as resp,
        ):
            assert resp.status == 200
            assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    finally:
        code = await node.astop(signal.SIGTERM, 30)
    assert code == 0
    err = node.log().encode()
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    access = [e for e in lines if e["logger"] == "fognode.access"]
    chat = [e for e in access if e["path"] == "/v1/chat/completions"]
    assert chat and chat[0]["request_id"] == "proc-1" and chat[0]["status"] == 200
    assert any("shutting down" in e["msg"] for e in lines)


def test_auth_none_is_refused_on_the_lan_and_warned_about_on_loopback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOGNODE_")}
    lan = subprocess.run(
        [*FOGNODE, "serve", "--no-tls", "--auth", "none", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert lan.returncode == 1
    assert "refusing to start" in lan.stderr and "FOGNODE_ALLOW_NO_AUTH_ON_LAN" in lan.stderr


def test_firebase_mode_without_project_or_keys_refuses_to_start(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FOGNODE_", "FIREBASE_", "GOOGLE_"))
    }
    env["XDG_DATA_HOME"] = str(tmp_path)  # no api-keys file from setup.sh
    proc = subprocess.run(
        [*FOGNODE, "serve", "--no-tls", "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "FOGNODE_FIREBASE_PROJECT_ID" in proc.stderr
