"""The embedded model end to end: `fognode serve` runs llama.cpp's server itself.

fognode runs as a user runs it (a process, TLS, an API key), the official
openai SDK talks to it, and what the child does is read from llama.cpp's
own log (fognode logs the child's lines at DEBUG) and from /proc. One node
serves the module; the tests that kill things start their own.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import openai
import pytest

from fognode.auth.api_keys import entry_for, new_key
from tests.support.embedded_node import (
    MODEL,
    alive,
    launch_embedded_node,
    llama_child,
    llama_children,
    wait_for,
)
from tests.support.helpers import wait_until
from tests.support.openai_schema import battery
from tests.support.pki import make_pki
from tests.support.processes import NodeProcess
from tests.support.tls import HOST, ConnectByIp

KEY = new_key()
MESSAGES = [{"role": "user", "content": "Why is the sky blue? Answer in one sentence."}]


@pytest.fixture(scope="module")
def embedded_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    directory = tmp_path_factory.mktemp("embedded")
    pki = make_pki(directory / "pki")
    proc = launch_embedded_node(
        directory,
        {
            "tls": "true",
            "certs_dir": str(pki.paths.directory),
            "auth": "firebase",
            "api_keys": entry_for(KEY, "tester", admin=True),
        },
        ca=pki.ca,
    )
    proc.wait_ready()
    yield proc
    proc.stop()


def client(embedded_node: NodeProcess, key: str = KEY) -> openai.AsyncOpenAI:
    ctx = ssl.create_default_context(cafile=str(embedded_node.ca))
    return openai.AsyncOpenAI(
        base_url=f"https://{HOST}:{embedded_node.port}/v1",
        api_key=key,
        http_client=httpx.AsyncClient(transport=ConnectByIp("127.0.0.1", ctx), timeout=120),
        max_retries=0,
    )


def admin_get(embedded_node: NodeProcess, path: str) -> httpx.Response:
    return httpx.get(
        f"{embedded_node.url}{path}",
        headers={"Authorization": f"Bearer {KEY}"},
        verify=False,
        timeout=10,
    )


def eval_runs(log: str) -> list[int]:
    """Tokens per finished generation, from llama.cpp's own performance lines."""
    return [int(n) for n in re.findall(r"eval time =\s+[\d.]+ ms /\s+(\d+) runs", log)]


async def test_streams_a_real_answer_over_tls_with_an_api_key(
    embedded_node: NodeProcess,
) -> None:
    async with client(embedded_node) as api:
        stream = await api.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True, max_tokens=24
        )
        parts: list[str] = []
        finish = None
        async for chunk in stream:
            if chunk.choices:
                parts.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        listed = [m.id async for m in api.models.list()]
    text = "".join(parts)
    print(f"\nembedded model through fognode: {text!r}")
    assert text.strip() and len(parts) > 2
    assert finish in ("stop", "length")
    assert listed == [MODEL]
    ready = embedded_node.readyz()
    assert ready is not None and ready.status_code == 200
    body = ready.json()
    assert body["upstream_kind"] == "embedded" and body["models"] == 1
    assert body["upstream_choice"].startswith("upstream_kind=embedded: serving the embedded")
    assert body["embedded"] == {"model": MODEL, "slots": [{"state": "ready", "restarts": 0}]}


async def test_auth_and_a_missing_model_as_for_ollama(embedded_node: NodeProcess) -> None:
    async with client(embedded_node, key="fnk_not-a-key") as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    async with client(embedded_node) as api:
        with pytest.raises(openai.NotFoundError) as caught:
            await api.chat.completions.create(model="llama3.1:70b", messages=MESSAGES)
    assert "model 'llama3.1:70b' not found, try pulling it first" in str(caught.value)
    assert KEY not in embedded_node.log()


async def test_every_answer_decodes_strictly(embedded_node: NodeProcess) -> None:
    """OpenAI's document checks every answer of the embedded model (tests/support/openai_schema.py),
    as the SpeziLLMFog app's generated client decodes them."""
    ctx = ssl.create_default_context(cafile=str(embedded_node.ca))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        found = await battery(
            http,
            f"https://127.0.0.1:{embedded_node.port}",
            model=MODEL,
            headers={"Authorization": f"Bearer {KEY}"},
            options={"ssl": ctx, "server_hostname": HOST},
        )
    counts = {kind: len(p) for kind, p in found.items()}
    assert not any(counts.values()), f"{counts}\n" + "\n".join(
        line for kind in found for line in found[kind][:6]
    )


async def test_requests_beyond_the_slots_wait_in_fognodes_queue(
    embedded_node: NodeProcess,
) -> None:
    """One slot (embedded_parallel=1): admission capacity 1, the second request queues."""

    async def ask() -> str:
        async with client(embedded_node) as api:
            done = await api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)
        return done.choices[0].message.content or ""

    first = asyncio.create_task(ask())
    second = asyncio.create_task(ask())
    seen = ""

    def queued() -> bool:
        nonlocal seen
        seen = admin_get(embedded_node, "/metrics").text
        return "fognode_queue_depth 1.0" in seen

    await asyncio.to_thread(wait_for, queued, "the second request in fognode's queue", 60)
    assert "fognode_admission_capacity 1.0" in seen
    assert "fognode_admission_active 1.0" in seen
    answers = await asyncio.gather(first, second)
    assert all(a.strip() for a in answers)


async def test_a_client_that_leaves_stops_the_generation(embedded_node: NodeProcess) -> None:
    before = len(eval_runs(embedded_node.log()))
    async with client(embedded_node) as api:
        stream = await api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count from one to five hundred in words."}],
            stream=True,
            max_tokens=600,
        )
        received = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
            if received >= 3:
                break
        await stream.close()  # the phone goes away
        await asyncio.to_thread(
            wait_for,
            lambda: "Disconnected from client" in embedded_node.log(),
            "llama.cpp's server to log the disconnect",
        )
        # One generation at a time: the follow-up finishes only after anything
        # still running, and llama.cpp counts the tokens of both in its log.
        follow_up = await api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert follow_up.choices[0].message.content is not None
    runs = eval_runs(embedded_node.log())[before:]
    print(f"\ncancelled after {received} chunks; llama.cpp's generations since: {runs}")
    assert runs and max(runs) < 100, f"a generation ran on after the client left: {runs}"


async def test_kill_9_of_the_child_is_followed_by_a_restart(embedded_node: NodeProcess) -> None:
    """Runs last in this module: it replaces the module's child."""
    child = llama_child(embedded_node)
    os.kill(child, signal.SIGKILL)
    async with client(embedded_node) as api:
        # At once: refused with 503 and Retry-After, neither a hang nor a 502.
        with pytest.raises(openai.APIStatusError) as caught:
            await api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        response = caught.value.response
        assert response.status_code == 503
        assert int(response.headers["Retry-After"]) >= 1
        assert response.json()["error"]["code"] == "upstream_starting"

        # /readyz says so too, as soon as the supervisor has seen the exit (the
        # request above can find the port closed a moment before; 503 either way).
        def starting() -> bool:
            ready = embedded_node.readyz()
            assert ready is not None and ready.status_code == 503
            return ready.json()["status"] == "starting" and "Retry-After" in ready.headers

        await wait_until(starting, "/readyz says the embedded model is starting")

        await asyncio.to_thread(embedded_node.wait_ready)
        answer = await api.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert answer.choices[0].message.content
    assert llama_child(embedded_node) != child and not alive(child)
    metrics = admin_get(embedded_node, "/metrics").text
    assert 'fognode_embedded_restarts_total{slot="0"} 1.0' in metrics
    assert 'fognode_embedded_up{slot="0"} 1.0' in metrics
    rss = re.search(r'fognode_embedded_memory_bytes\{slot="0"\} (\S+)', metrics)
    assert rss and float(rss.group(1)) > 10e6
    log = embedded_node.log()
    assert "was killed by SIGKILL" in log and "Its last lines:" in log


def test_sigterm_stops_the_child_before_fognode_exits(tmp_path: Path) -> None:
    node = launch_embedded_node(tmp_path)
    try:
        node.wait_ready()
        child = llama_child(node)
        assert node.stop(signal.SIGTERM) == 0
        assert not alive(child) and llama_children(node.pid) == []
        assert "llama.cpp server 0 stopped" in node.log()
    finally:
        node.stop(signal.SIGKILL)


def test_sigkill_of_fognode_leaves_no_orphan(tmp_path: Path) -> None:
    node = launch_embedded_node(tmp_path)
    child = None
    try:
        node.wait_ready()
        child = llama_child(node)
        node.stop(signal.SIGKILL)
        started = time.monotonic()
        wait_for(lambda: not alive(child), "the orphaned llama.cpp server to die", 20)
        print(f"\nllama.cpp server gone {time.monotonic() - started:.2f}s after SIGKILL of fognode")
    finally:
        node.stop(signal.SIGKILL)
        if child is not None and alive(child):
            os.kill(child, signal.SIGKILL)  # do not leave it running if the test failed
