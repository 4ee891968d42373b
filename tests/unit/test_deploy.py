"""deploy/: the Dockerfile and the compose files as written (what can be checked
without a Docker engine, without running anything)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def compose(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / name).read_text()))


def test_dockerfile_is_pinned_non_root_and_checks_health() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(froms) == 2  # multi-stage
    for image in froms:
        assert ":" in image and not image.endswith(":latest"), image
    assert re.search(r"^USER\s+10001:10001$", text, re.M)  # the fognode user, numeric
    assert 'CMD ["fognode", "healthcheck"]' in text
    assert 'ENTRYPOINT ["fognode"]' in text
    # Port 443, the one the SpeziLLMFog app connects to, as the non-root user:
    # the interpreter carries exactly cap_net_bind_service=ep (the xattr
    # setcap would write: revision 2, effective, permitted bit 10).
    assert re.search(r"FOGNODE_PORT=443\b", text) and re.search(r"^EXPOSE 443$", text, re.M)
    xattr = re.search(r"struct\.pack\('<5I', (0x[0-9a-f]+), 1 << (\d+), 0, 0, 0\)", text)
    assert xattr is not None and xattr.groups() == ("0x02000001", "10")
    assert text.index("setxattr") < text.index("USER 10001")
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


def test_production_compose_file() -> None:
    spec = compose("docker-compose.yml")
    services = spec["services"]
    gateway = services["fognode"]
    assert gateway["network_mode"] == "host"  # multicast must reach the LAN
    assert any(v.endswith(":/certs:ro") for v in gateway["volumes"])
    assert gateway["secrets"] == ["firebase_service_account"]
    assert gateway["environment"]["FOGNODE_FIREBASE_CREDENTIALS_FILE"].startswith("/run/secrets/")
    assert "ollama-models:/root/.ollama" in services["ollama"]["volumes"]
    assert services["ollama-pull"]["restart"] == "no"
    assert services["ollama-pull"]["entrypoint"][:2] == ["ollama", "pull"]
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
