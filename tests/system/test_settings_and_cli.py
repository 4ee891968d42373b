"""Settings precedence, and the `fognode` command run as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from pydantic import ValidationError

from fognode.gateway.config.settings import Settings, load_settings
from tests.helpers import free_port
from tests.ollama_standin import OllamaStandIn

FOGNODE = [sys.executable, "-m", "fognode.gateway.cli"]


def test_defaults_are_safe_and_documented() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.tls is True and settings.port == 8443
    assert Settings(tls=False).port == 8080
    assert settings.upstream_base == "http://127.0.0.1:11434"
    assert settings.first_byte_timeout >= 300  # slow CPUs load models for minutes
    for name, field in Settings.model_fields.items():
        documented = field.description or name in {"log_level"}
        assert documented, f"setting {name} has no description"


def test_precedence_override_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "fognode.toml"
    config.write_text('port = 7000\nidle_timeout = 42\nlog_format = "json"\n')
    monkeypatch.setenv("FOGNODE_PORT", "7100")
    settings = load_settings(config, port=None)
    assert settings.port == 7100  # env beats file
    assert settings.idle_timeout == 42  # file beats default
    assert settings.log_format == "json"
    assert load_settings(config, port=7200).port == 7200  # flag beats env


def test_config_file_from_env_and_fognode_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[fognode]\nupstream_url = "http://10.0.0.5:11434"\n')
    monkeypatch.setenv("FOGNODE_CONFIG", str(config))
    assert Settings().upstream_base == "http://10.0.0.5:11434"


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("FOGNODE_PORT", "70000"),
        ("FOGNODE_UPSTREAM_URL", "not a url"),
        ("FOGNODE_IDLE_TIMEOUT", "0"),
        ("FOGNODE_LOG_FORMAT", "xml"),
    ],
)
def test_invalid_settings_are_rejected(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError):
        Settings()


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "typo.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ValidationError):
        load_settings(config)


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
    standin: OllamaStandIn,
) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *FOGNODE,
        "serve",
        "--no-tls",
        "--auth",
        "none",
        "--port",
        str(port),
        "--upstream-url",
        standin.url,
        "--log-format",
        "json",
        stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, FOGNODE_SHUTDOWN_TIMEOUT="2"),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        async with http.get(f"{url}/healthz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.1)
            async with http.post(
                f"{url}/v1/chat/completions",
                json={
                    "model": "llama3.2:1b",
                    "stream": True,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                headers={"X-Request-ID": "proc-1"},
            ) as resp:
                assert resp.status == 200
                assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert proc.stderr is not None
            err = await proc.stderr.read()
            code = await proc.wait()
    assert code == 0
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
