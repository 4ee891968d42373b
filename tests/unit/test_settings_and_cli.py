"""Settings precedence, and the `fognode` command run as a user runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fognode.gateway.config.settings import Settings, load_settings


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
