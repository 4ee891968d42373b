"""deploy/: the Dockerfile, .dockerignore and the compose files as written (what
can be checked without a Docker engine, without running anything)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / name).read_text()))


def test_dockerfile_is_pinned_hash_checked_drops_root_and_checks_health() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) == 2  # multi-stage
    for image in froms:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-trixie(\s+AS\s+\w+)?", image), image
    assert "--require-hashes" in text and "lock=requirements.lock" in text
    assert "lock=requirements-embedded.lock" in text  # EMBEDDED=1: the same pins and the engine
    assert 'CMD ["fognode", "healthcheck"]' in text
    assert 'ENTRYPOINT ["fognode-entrypoint"]' in text
    # No file capability (no-new-privileges would void it): the entrypoint
    # drops from root to 10001 keeping CAP_NET_BIND_SERVICE as ambient.
    assert "setxattr" not in text and "security.capability" not in text
    assert re.search(r"useradd --system --uid 10001 ", text)
    assert re.search(r"useradd --system --uid 10002 --gid 10001 ", text)
    entry = (DEPLOY / "entrypoint.sh").read_text()
    assert "setpriv" in entry and "--ambient-caps" in entry and "IMAGE_RUN_AS:-10001:10001" in entry
    assert os.access(DEPLOY / "entrypoint.sh", os.X_OK)
    assert re.search(r"FOGNODE_PORT=443\b", text) and re.search(r"^EXPOSE 443$", text, re.M)
    # Every folder the distribution installs is in the build context.
    import tomllib

    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY\s+(\w+)\s+\1$", text, re.M))
    assert folders <= copied, folders - copied
    root = DEPLOY.parent
    for source in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.M):
        for path in source.split():
            assert (root / path).exists(), path


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    """The context is the repository: without .dockerignore it held .venv and .git."""
    ignore = (DEPLOY.parent / ".dockerignore").read_text().splitlines()
    rules = [r for r in ignore if r and not r.startswith("#")]
    assert rules[0] == "*"  # everything out, then the few things back in
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    text = (DEPLOY / "Dockerfile").read_text()
    for source in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.M):
        for path in source.split():
            assert path in allowed, f"{path} is copied but not in the build context"
    assert not allowed & {".venv", ".git", "tests", "bench", "docs"}


def test_production_compose_file() -> None:
    spec = compose("docker-compose.yml")
    services = spec["services"]
    gateway, certs = services["fognode"], services["fognode-certs"]
    assert gateway["network_mode"] == "host"  # multicast must reach the LAN
    assert certs["network_mode"] == "none"  # signing needs no network
    assert "fognode-tls:/var/lib/fognode-tls:ro" in gateway["volumes"]
    assert "fognode-tls:/var/lib/fognode-tls" in certs["volumes"]
    # The issuing CA reaches the renewal only; no CA key for the gateway.
    assert any(v.endswith("/issuer:/run/host:ro") for v in certs["volumes"])
    assert not any("issuer" in v or "/ca" in v for v in gateway["volumes"])
    assert any(v.endswith("/api-keys:/run/host/api-keys:ro") for v in gateway["volumes"])
    assert gateway["environment"]["FOGNODE_API_KEYS_FILE"] == "/run/fognode/api-keys"
    assert "secrets" not in gateway  # Firebase is optional when API keys exist
    for service in (gateway, certs):
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
    assert "NET_BIND_SERVICE" in gateway["cap_add"] and "NET_BIND_SERVICE" not in certs["cap_add"]
    assert gateway["depends_on"]["fognode-certs"]["condition"] == "service_healthy"
    assert "ollama-models:/root/.ollama" in services["ollama"]["volumes"]
    pull = services["ollama-pull"]
    assert pull["entrypoint"][:2] == ["ollama", "pull"]
    # The pull waits until Ollama answers, and tries again if it fails.
    assert pull["depends_on"]["ollama"]["condition"] == "service_healthy"
    assert services["ollama"]["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    assert pull["restart"] == "on-failure"
    for service in services.values():
        image = service.get("image", "")
        assert not image.endswith(":latest")


def test_development_compose_file() -> None:
    spec = compose("docker-compose.dev.yml")
    services = spec["services"]
    assert "--no-tls" in services["fognode"]["command"]
    env = services["fognode"]["environment"]
    assert env["FOGNODE_FIREBASE_AUTH_EMULATOR_HOST"] == "auth-emulator:9099"
    assert env["FOGNODE_FIREBASE_PROJECT_ID"].startswith("demo-")
    assert "emulators:start --only auth" in services["auth-emulator"]["command"]
