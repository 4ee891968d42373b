"""Which upstream serves: as configured, else Ollama if it answers, else the embedded model.

"Ollama's default address" is pointed at a stand-in or at a free loopback
port, so the tests never depend on what runs at 127.0.0.1:11434 here.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import aiohttp
import pytest

from fognode.embedded.options import EmbeddedOptions
from fognode.embedded.runtime import EmbeddedRuntime
from fognode.embedded.supervisor import LlamaServer, State
from fognode.gateway.config.sections import upstreams as settings_module
from fognode.gateway.config.settings import Settings
from fognode.gateway.node.announce import AnnounceOptions, NodeAnnouncer, announcement
from fognode.gateway.node.server import RunningServer, start_server
from fognode.gateway.pipeline.admission import ADMISSION
from fognode.gateway.upstreams.pool import UPSTREAM
from tests.support.embedded_node import MODEL, alive
from tests.support.gateway import fresh_settings
from tests.support.helpers import free_port, wait_until
from tests.support.processes import FOGNODE

CHAT = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}


async def test_the_embedded_model_serves_when_nothing_answers_at_the_default_address(
    unconfigured: list[RunningServer],
    monkeypatch: pytest.MonkeyPatch,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nothing = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(settings_module, "DEFAULT_UPSTREAM_URL", nothing)
    caplog.set_level(logging.INFO, logger="fognode.upstream")
    gateway = await start_server(fresh_settings())
    unconfigured.append(gateway)
    app = gateway.app
    pool = app[UPSTREAM]
    assert pool.kind == "embedded" and app[ADMISSION].capacity == 1
    [choice] = [r.getMessage() for r in caplog.records if r.name == "fognode.upstream"]
    assert choice.startswith(
        f"upstream: no upstream configured and no Ollama at {nothing} (Connection refused)"
    )
    assert f"serving the embedded model {MODEL}" in choice

    async with http.get(f"{gateway.url}/readyz") as resp:
        first = await resp.json()
    if resp.status == 503:  # still loading: says so, with when to come back
        assert first["status"] == "starting" and int(resp.headers["Retry-After"]) >= 1
    runtime = app[UPSTREAM].members[0].local
    assert isinstance(runtime, LlamaServer)
    await asyncio.wait_for(runtime.wait_ready(), 120)

    async with http.get(f"{gateway.url}/readyz") as resp:
        body = await resp.json()
    assert resp.status == 200 and body["upstream_choice"] == choice.removeprefix("upstream: ")
    async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        answer = await resp.json()
    assert answer["model"] == MODEL and answer["choices"][0]["message"]["content"] is not None
    base = announcement(
        Settings(upstream_kind="embedded"), port=gateway.port, ca_sha256="", auth="none", capacity=1
    )
    announcer = NodeAnnouncer(base, AnnounceOptions(10, 5), admission=app[ADMISSION], pool=pool)
    assert announcer.current_txt().models == (MODEL,)
    assert announcer.current_txt().api == "openai"

    pid = runtime.pid
    assert pid is not None and alive(pid)
    unconfigured.remove(gateway)
    await gateway.stop()
    assert not alive(pid)


def test_forcing_the_embedded_model_without_one_refuses_to_start(tmp_path: Path) -> None:
    out = subprocess.run(
        [*FOGNODE, "serve", "--no-tls", "--auth", "none", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "XDG_DATA_HOME": str(tmp_path),
            "FOGNODE_UPSTREAM_KIND": "embedded",
            "FOGNODE_EMBEDDED_MODEL": str(tmp_path / "missing.gguf"),
        },
    )
    assert out.returncode == 1
    assert "neither a GGUF file nor one of the packaged models" in out.stderr


async def test_a_crashing_child_is_restarted_with_backoff_and_its_last_lines_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"this is not a GGUF file\n" * 100)
    options = EmbeddedOptions(
        models_dir=tmp_path,
        model=str(broken),
        restart_delay=0.05,
        restart_max_delay=0.2,
    )
    caplog.set_level(logging.INFO, logger="fognode.embedded")
    runtime = EmbeddedRuntime(options)
    server = runtime.servers[0]
    await runtime.start()
    try:
        await wait_until(lambda: server.restarts >= 3, "three restarts", 120)
        waiting = server.not_ready()
        assert waiting is not None and waiting[1] > 0
    finally:
        await runtime.stop()
    assert server.state is State.STOPPED and server.pid is None
    crashes = [r.getMessage() for r in caplog.records if "Its last lines" in r.getMessage()]
    assert len(crashes) >= 3
    assert "exited with status 1" in crashes[0] and "restart 1 in 0.05s" in crashes[0]
    assert "restart 3 in 0.2s" in crashes[2]  # doubled, then capped
    assert "failed to load model" in crashes[0].lower()  # llama-cpp-python's own words


async def test_parallel_slots_are_processes_that_share_the_load(
    unconfigured: list[RunningServer],
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = fresh_settings().model_copy(
        update={"upstream_kind": "embedded", "embedded_parallel": 2, "embedded_threads": 1}
    )
    caplog.set_level(logging.DEBUG, logger="fognode.embedded.llama")
    gateway = await start_server(settings)
    unconfigured.append(gateway)
    app = gateway.app
    pool = app[UPSTREAM]
    assert len(pool.members) == 2 and app[ADMISSION].capacity == 2
    servers = [m.local for m in pool.members if isinstance(m.local, LlamaServer)]
    assert len(servers) == 2
    await asyncio.wait_for(asyncio.gather(*(s.wait_ready() for s in servers)), 120)
    # Each slot's readiness starts a check of the pool, in a task: the second
    # may still be under way. This test is about spreading requests, so it
    # starts from a pool that has seen both slots serve the model.
    await pool.refresh()

    async def ask() -> int:
        async with http.post(f"{gateway.url}/v1/chat/completions", json=CHAT) as resp:
            await resp.read()
            return resp.status

    assert await asyncio.gather(ask(), ask()) == [200, 200]
    served = {
        r.getMessage().split("]")[0]
        for r in caplog.records
        if r.name == "fognode.embedded.llama" and "POST /v1/chat/completions" in r.getMessage()
    }
    assert served == {"[0", "[1"}  # one request each, at the same time
    async with http.get(f"{gateway.url}/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == [MODEL]
    async with http.get(f"{gateway.url}/readyz") as resp:
        slots = (await resp.json())["embedded"]["slots"]
    assert slots == [{"state": "ready", "restarts": 0}] * 2


async def test_slots_say_their_model_is_hot_and_keep_a_conversation(
    unconfigured: list[RunningServer], http: aiohttp.ClientSession
) -> None:
    """Real llama.cpp children: the served model is hot (in /v1/models and for
    mDNS), and a conversation's next turn goes to the child that holds its prompt."""
    settings = fresh_settings().model_copy(
        update={"upstream_kind": "embedded", "embedded_parallel": 2, "embedded_threads": 1}
    )
    gateway = await start_server(settings)
    unconfigured.append(gateway)
    pool = gateway.app[UPSTREAM]
    servers = [m.local for m in pool.members if isinstance(m.local, LlamaServer)]
    await asyncio.wait_for(asyncio.gather(*(s.wait_ready() for s in servers)), 120)
    await pool.refresh()
    async with http.get(f"{gateway.url}/v1/models") as resp:
        (entry,) = (await resp.json())["data"]
    assert entry["id"] == MODEL
    assert entry["fognode"]["loaded"] is True and entry["fognode"]["loaded_on"] == 2
    assert pool.hot_models() == [MODEL]

    messages = [{"role": "user", "content": "Name a colour."}]
    async with http.post(
        f"{gateway.url}/v1/chat/completions", json={**CHAT, "messages": messages}
    ) as resp:
        assert resp.status == 200
        where = resp.headers["X-Fognode-Upstream"]
        answer = (await resp.json())["choices"][0]["message"]["content"]
    messages += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And another one?"},
    ]
    async with http.post(
        f"{gateway.url}/v1/chat/completions", json={**CHAT, "messages": messages}
    ) as resp:
        assert resp.status == 200
        assert (resp.headers["X-Fognode-Upstream"], resp.headers["X-Fognode-Upstream-Reason"]) == (
            where,
            "loaded,affinity",
        )
