"""`fognode models`: the operator's model management, through a real gateway.

The CLI runs as its own process, against a TLS gateway with API keys in
front of the Ollama stand-in, whose pull stream has Ollama's shape and pace.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from fognode.auth.api_keys import entry_for, new_key
from fognode.gateway.node.server import RunningServer
from tests.support.gateway import GatewayFactory
from tests.support.helpers import free_port, wait_until
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import Pki, make_pki

ADMIN_KEY, USER_KEY = new_key(), new_key()


@pytest.fixture
async def standin() -> AsyncIterator[OllamaStandIn]:
    server = OllamaStandIn()
    server.load("llama3.2:1b")  # in memory: /api/ps lists it
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def admin_gateway(
    standin: OllamaStandIn, make_gateway: GatewayFactory, pki: Pki
) -> RunningServer:
    return await make_gateway(
        standin.url,
        tls=True,
        certs_dir=pki.paths.directory,
        auth="firebase",
        api_keys=[
            entry_for(ADMIN_KEY, "operator", admin=True),
            entry_for(USER_KEY, "app", admin=False),
        ],
    )


def _env(tmp_path: Path) -> Mapping[str, str]:
    # No admin key of this machine's own setup may stand in for the test's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOGNODE_")}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["COLUMNS"] = "120"
    return env


def _as_at_a_terminal() -> None:
    """Ctrl-C must reach the CLI as it does at a terminal. A shell that runs the
    suite in the background without job control (a CI step, ``cmd &`` in a
    script) ignores SIGINT for it, and an ignored signal stays ignored across
    exec: the CLI would never see the interrupt this file sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def start_cli(tmp_path: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fognode.gateway.cli",
        "models",
        *args,
        env=_env(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_as_at_a_terminal,
    )


async def run_cli(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    proc = await start_cli(tmp_path, *args)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def target(admin_gateway: RunningServer, pki: Pki, key: str = ADMIN_KEY) -> list[str]:
    return ["--url", admin_gateway.url, "--ca", str(pki.ca), "--api-key", key]


async def test_pull_shows_progress_layer_by_layer_to_100_percent(
    admin_gateway: RunningServer, standin: OllamaStandIn, pki: Pki, tmp_path: Path
) -> None:
    standin.pull_pace = 0.02
    code, out, err = await run_cli(tmp_path, "pull", "llama3.1:8b", *target(admin_gateway, pki))
    assert code == 0, err
    assert out.startswith("Pulled llama3.1:8b (1.2 GiB) in ")
    assert "llama3.1:8b" in standin.models
    # Ollama's statuses, in order, and one bar per layer.
    frames = re.split(r"[\r\n]+", err)
    statuses = [
        f for f in frames if (f and not f.startswith("pulling ")) or f == "pulling manifest"
    ]
    assert statuses == [
        "pulling manifest",
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    layers = list(dict.fromkeys(m.group(1) for m in re.finditer(r"pulling ([0-9a-f]{12})", err)))
    assert len(layers) == len(standin.pull_layers)
    # The big layer: every report drawn, 0% to 100%, with bytes, rate and time left.
    big = [f for f in frames if f.startswith(f"pulling {layers[0]}")]
    percents = [int(re.search(r"(\d+)%", f).group(1)) for f in big]  # type: ignore[union-attr]
    assert list(dict.fromkeys(percents)) == [0, 25, 50, 75, 100]  # closing redraws 100%
    assert re.search(r"1\.23G/1\.23G \[[0-9:]+<00:00, *[0-9.]+[KMGTPEZY]?B/s\]", big[-1]), big[-1]
    assert re.search(r"315M/1\.23G \[[0-9:]+<[0-9:]+, *[0-9.]+[KMGTPEZY]?B/s\]", big[1]), big[1]
    # Every small layer ends at 100% too.
    for digest in layers[1:]:
        last = [f for f in frames if f.startswith(f"pulling {digest}")][-1]
        assert " 100%|" in last, last


async def test_ctrl_c_mid_pull_cancels_the_pull_on_the_node(
    admin_gateway: RunningServer, standin: OllamaStandIn, pki: Pki, tmp_path: Path
) -> None:
    standin.pull_pace = 0.5  # slow enough to interrupt between two reports
    proc = await start_cli(tmp_path, "pull", "llama3.1:8b", *target(admin_gateway, pki))
    assert proc.stderr is not None
    seen = b""
    while b"25%" not in seen:  # the first layer is under way
        chunk = await proc.stderr.read(4096)
        assert chunk, seen.decode()
        seen += chunk
    proc.send_signal(signal.SIGINT)
    rest, _ = await asyncio.gather(proc.stderr.read(), proc.wait())
    assert proc.returncode == 130
    assert "Interrupted: the pull was cancelled on the node" in rest.decode()
    assert "Traceback" not in (seen + rest).decode()
    await wait_until(lambda: standin.cancelled == 1, "the stand-in saw the pull cancelled")
    assert "llama3.1:8b" not in standin.models and standin.active == 0


async def test_list_and_rm(
    admin_gateway: RunningServer, standin: OllamaStandIn, pki: Pki, tmp_path: Path
) -> None:
    code, out, err = await run_cli(tmp_path, "list", *target(admin_gateway, pki))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "PARAMETERS", "QUANTIZATION", "LOADED"]
    assert lines[1].split() == ["llama3.2:1b", "1.2", "GiB", "1.2B", "Q8_0", "yes"]
    assert lines[2].split() == ["qwen2.5:0.5b", "1.2", "GiB", "1.2B", "Q8_0"]

    code, out, _ = await run_cli(tmp_path, "list", "--json", *target(admin_gateway, pki))
    listed = json.loads(out)["models"]
    assert [(m["name"], m["loaded"]) for m in listed] == [
        ("llama3.2:1b", True),
        ("qwen2.5:0.5b", False),
        ("nomic-embed-text:latest", False),
    ]

    code, out, err = await run_cli(tmp_path, "rm", "qwen2.5:0.5b", *target(admin_gateway, pki))
    assert (code, out) == (0, "Deleted qwen2.5:0.5b\n"), err
    assert json.loads(standin.last("/api/delete").body) == {"model": "qwen2.5:0.5b"}

    code, out, err = await run_cli(tmp_path, "rm", "nope:1b", *target(admin_gateway, pki))
    assert code == 6 and out == ""
    assert "Model 'nope:1b' is not on the node (model 'nope:1b' not found)" in err


async def test_the_default_is_the_node_on_this_machine_with_setups_admin_key(
    admin_gateway: RunningServer, pki: Pki, tmp_path: Path
) -> None:
    """No --api-key: the key setup.sh wrote to the data directory is used."""
    key_file = tmp_path / "data" / "fognode" / "admin-api-key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text(ADMIN_KEY + "\n")
    code, out, err = await run_cli(
        tmp_path, "list", "--url", admin_gateway.url, "--ca", str(pki.ca)
    )
    assert code == 0 and "llama3.2:1b" in out, err


async def test_clear_errors(
    admin_gateway: RunningServer, standin: OllamaStandIn, pki: Pki, tmp_path: Path
) -> None:
    async def fails(*args: str) -> tuple[int, str]:
        code, out, err = await run_cli(tmp_path, *args)
        assert out == "" and "Traceback" not in err
        return code, err

    code, err = await fails("list", *target(admin_gateway, pki, key=ADMIN_KEY + "x"))
    assert code == 5 and "401: the node refused the credentials" in err
    code, err = await fails("pull", "llama3.1:8b", *target(admin_gateway, pki, key=USER_KEY))
    assert code == 5 and "403" in err and "fognode apikey create NAME --admin" in err
    assert ADMIN_KEY not in err and USER_KEY not in err

    standin.registry = ("llama3.1:8b",)
    code, err = await fails("pull", "no-such-model", *target(admin_gateway, pki))
    assert code == 6
    assert "Pulling 'no-such-model' failed: pull model manifest: file does not exist" in err

    code, err = await fails("pull", "bad name", *target(admin_gateway, pki))
    assert code == 1 and "invalid model name" in err

    rogue = make_pki(tmp_path / "rogue", common_name="not the node's CA")
    code, err = await fails("list", "--url", admin_gateway.url, "--ca", str(rogue.ca))
    assert code == 4 and "TLS failed" in err

    code, err = await fails(
        "list", "--url", f"https://127.0.0.1:{free_port()}", "--ca", str(pki.ca)
    )
    assert code == 3 and "Cannot reach the node" in err

    code, err = await fails(
        "list", "--url", admin_gateway.url, "--ca", str(tmp_path / "missing.crt")
    )
    assert code == 1 and "missing.crt not found" in err
