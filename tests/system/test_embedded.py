"""The embedded model end to end: `fognode serve` runs llama.cpp's server itself.

fognode runs as a user runs it (a process, TLS, an API key), the official
openai SDK talks to it, and what the engine does is read from llama.cpp's
own log (fognode logs the child's lines at DEBUG), from its own /slots (on
its loopback port) and from /proc. One node (the default four slots) serves
the module; the tests that kill things or need other settings start their
own.
"""

from __future__ import annotations

import asyncio
import json
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
    engine_url,
    launch_embedded_node,
    llama_child,
    llama_children,
    wait_for,
)
from tests.support.helpers import stream_a_while, wait_until
from tests.support.openai_schema import battery
from tests.support.pki import make_pki
from tests.support.processes import NodeProcess
from tests.support.tls import HOST, ConnectByIp

KEY = new_key()
# Phones are people: each has its own key (a user runs two requests at once).
PHONES = [new_key() for _ in range(5)]
MESSAGES = [{"role": "user", "content": "Why is the sky blue? Answer in one sentence."}]
COUNT = [{"role": "user", "content": "Count from one to five hundred in words."}]


@pytest.fixture(scope="module")
def embedded_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    directory = tmp_path_factory.mktemp("embedded")
    pki = make_pki(directory / "pki")
    proc = launch_embedded_node(
        directory,
        {
            "FOGNODE_TLS": "true",
            "FOGNODE_CERTS_DIR": str(pki.paths.directory),
            "FOGNODE_AUTH": "firebase",
            "FOGNODE_API_KEYS": ",".join(
                [
                    entry_for(KEY, "tester", admin=True),
                    *(entry_for(k, f"phone{n}", admin=False) for n, k in enumerate(PHONES)),
                ]
            ),
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


def busy_slots(engine: str) -> dict[int, int]:
    """Slot id -> tokens generated so far, for every slot the engine is working in."""
    slots = httpx.get(f"{engine}/slots", timeout=10).json()
    return {s["id"]: s["next_token"][0]["n_decoded"] for s in slots if s["is_processing"]}


async def test_streams_a_real_answer_over_tls_with_an_api_key(embedded_node: NodeProcess) -> None:
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
        listed = [m async for m in api.models.list()]
        entry = await api.models.retrieve(MODEL)
    text = "".join(parts)
    print(f"\nembedded model through fognode: {text!r}")
    assert text.strip() and len(parts) > 2
    assert finish in ("stop", "length")
    assert [m.id for m in listed] == [MODEL] and listed[0].object == "model"
    assert isinstance(listed[0].created, int) and listed[0].created > 0
    assert (entry.id, entry.object) == (MODEL, "model")
    ready = embedded_node.readyz()
    assert ready is not None and ready.status_code == 200
    body = ready.json()
    assert body["upstream_kind"] == "embedded" and body["models"] == 1
    assert body["upstream_choice"].startswith("upstream_kind=embedded: serving the embedded")
    assert body["embedded"] == {"model": MODEL, "state": "ready", "restarts": 0, "slots": 4}


async def test_auth_and_a_missing_model_as_for_ollama(embedded_node: NodeProcess) -> None:
    """llama.cpp's server answers any model name with its own, and 404s
    /v1/models/<its alias>: the node checks names and words a missing model
    the way the app matches."""
    async with client(embedded_node, key="fnk_not-a-key") as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    async with client(embedded_node) as api:
        with pytest.raises(openai.NotFoundError) as caught:
            await api.chat.completions.create(model="llama3.1:70b", messages=MESSAGES)
        assert "model 'llama3.1:70b' not found, try pulling it first" in str(caught.value)
        with pytest.raises(openai.NotFoundError) as caught:
            await api.models.retrieve("llama3.1:70b")
    assert "model 'llama3.1:70b' not found, try pulling it first" in str(caught.value)
    assert caught.value.response.json()["error"]["code"] == "model_not_found"
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


async def test_the_stream_the_app_needs_with_the_engines_own_usage(
    embedded_node: NodeProcess,
) -> None:
    """Role in every delta (the engine sends it in the first only, and a null
    content there), ``max_completion_tokens`` honoured, and with
    ``include_usage`` a usage chunk whose counts are the engine's."""
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "stream": True,
        "max_completion_tokens": 7,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient(verify=False, timeout=60) as http:
        resp = await http.post(
            f"{embedded_node.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert resp.status_code == 200
    events = [line.removeprefix("data: ") for line in resp.text.split("\n") if line]
    assert events[-1] == "[DONE]" and not any(e.startswith(":") for e in events[:-1])
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c for c in chunks if c["choices"]]
    assert all(c["choices"][0]["delta"].get("role") == "assistant" for c in deltas)
    content = [
        c["choices"][0]["delta"]["content"]
        for c in deltas
        if c["choices"][0]["delta"].get("content")
    ]
    assert len(content) == 7 and deltas[-1]["choices"][0]["finish_reason"] == "length"
    (usage_chunk,) = [c for c in chunks if not c["choices"]]
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7
    assert usage_chunk["timings"]["predicted_n"] == 7  # the engine's own count


async def test_requests_beyond_the_slots_wait_in_fognodes_queue(embedded_node: NodeProcess) -> None:
    """Four slots (the default): admission capacity 4, a fifth request queues
    in fognode (where a client that leaves is dropped), not in the engine."""

    async def ask(key: str) -> str:
        async with client(embedded_node, key) as api:
            # Long enough (no early end) that the fifth waits while the slots work.
            done = await api.chat.completions.create(
                model=MODEL, messages=COUNT, max_tokens=160, extra_body={"ignore_eos": True}
            )
        return done.choices[0].message.content or ""

    asks = [asyncio.create_task(ask(key)) for key in PHONES]
    seen = ""

    def queued() -> bool:
        nonlocal seen
        seen = admin_get(embedded_node, "/metrics").text
        return "fognode_queue_depth 1.0" in seen

    await asyncio.to_thread(wait_for, queued, "the fifth request in fognode's queue", 60)
    assert "fognode_admission_capacity 4.0" in seen
    assert "fognode_admission_active 4.0" in seen
    answers = await asyncio.gather(*asks)
    assert all(a.strip() for a in answers)


async def test_four_phones_streaming_at_once_all_get_a_token_before_any_finishes(
    embedded_node: NodeProcess,
) -> None:
    """Continuous batching: the slots are decoded together, so no phone waits
    for another's whole answer (one llama-cpp-python process made the fourth
    wait for three)."""
    first_token: list[float] = []
    finished: list[float] = []

    async def phone(number: int) -> int:
        async with client(embedded_node, PHONES[number]) as api:
            stream = await api.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Phone {number}: count to a hundred."}],
                stream=True,
                max_tokens=48,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            )
            generated = 0
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and not generated:
                    generated = -1
                    first_token.append(time.monotonic())
                if chunk.usage is not None:
                    generated = chunk.usage.completion_tokens
        finished.append(time.monotonic())
        return generated

    # All 48 tokens each, by the engine's count (a token that ends inside a
    # character arrives with the next one, so chunks may be fewer).
    counts = await asyncio.gather(*(phone(n) for n in range(4)))
    assert counts == [48] * 4
    print(
        f"\nlast first token {max(first_token) - min(first_token):.2f}s after the first; "
        f"first answer done {min(finished) - min(first_token):.2f}s after it"
    )
    assert max(first_token) < min(finished)


async def test_a_client_that_leaves_stops_the_generation(embedded_node: NodeProcess) -> None:
    engine = engine_url(embedded_node)
    async with client(embedded_node) as api:
        stream = await stream_a_while(api, MODEL)
        generating = await asyncio.to_thread(busy_slots, engine)
        await stream.close()  # the phone goes away
    left = time.monotonic()
    assert len(generating) == 1
    decoded = max(generating.values())

    def stopped() -> bool:
        nonlocal decoded
        now = busy_slots(engine)
        decoded = max([decoded, *now.values()])
        return not now

    await asyncio.to_thread(wait_for, stopped, "the engine's slot to be free again", 30)
    print(
        f"\ncancelled after 3 chunks; the slot was free {time.monotonic() - left:.2f}s "
        f"later, after {decoded} of 600 tokens"
    )
    assert decoded < 300
    await asyncio.to_thread(
        wait_for,
        lambda: "cancel task" in embedded_node.log(),
        "llama.cpp's log to say it cancelled",
    )


async def test_many_streams_in_a_row_reuse_no_connection_the_engine_closes(
    embedded_node: NodeProcess,
) -> None:
    """llama.cpp's server closes its connection after each streamed answer
    while it says Keep-Alive; the node opens a new one instead of racing the
    close (a POST sent on a closing connection cannot be sent again: 502)."""
    async with client(embedded_node) as api:
        for turn in range(25):
            if turn % 5 == 4:  # plain answers keep their connection: the two mix
                done = await api.chat.completions.create(
                    model=MODEL, messages=MESSAGES, max_tokens=2
                )
                assert done.choices
                continue
            stream = await api.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, max_tokens=2
            )
            assert [c async for c in stream]
    # Every one of them answered (the access log; a refused resend would be 502).
    assert not re.search(r'"POST /v1/chat/completions" 5\d\d ', embedded_node.log())


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
    assert "fognode_embedded_restarts_total 1.0" in metrics
    assert "fognode_embedded_up 1.0" in metrics
    rss = re.search(r"^fognode_embedded_memory_bytes (\S+)$", metrics, re.M)
    assert rss and float(rss.group(1)) > 10e6
    log = embedded_node.log()
    assert "was killed by SIGKILL" in log and "Its last lines:" in log


def test_an_idle_engine_sleeps_says_so_and_wakes_for_the_next_request(tmp_path: Path) -> None:
    """FOGNODE_EMBEDDED_IDLE_SECONDS: the engine unloads the model (memory
    goes back), /readyz and the status page say asleep, a request wakes it."""
    node = launch_embedded_node(
        tmp_path,
        {
            "FOGNODE_EMBEDDED_IDLE_SECONDS": "2",
            "FOGNODE_API_KEYS": entry_for(KEY, "tester", admin=True),
            "FOGNODE_AUTH": "firebase",
        },
    )
    try:
        node.wait_ready()

        def state() -> str:
            ready = node.readyz()
            assert ready is not None and ready.status_code == 200
            return str(ready.json()["embedded"]["state"])

        def memory() -> float:
            metrics = admin_get(node, "/metrics").text
            found = re.search(r"^fognode_embedded_memory_bytes (\S+)$", metrics, re.M)
            assert found
            return float(found.group(1))

        awake = memory()
        wait_for(lambda: state() == "asleep", "the engine to fall asleep", 30)
        asleep = memory()
        page = admin_get(node, "/").text
        assert 'class="engine-state asleep"' in page
        # Its model is not in memory: the node's model list says so too (every
        # worker as soon as the supervisor's check reached it).
        wait_for(
            lambda: (
                [m["fognode"]["loaded"] for m in admin_get(node, "/v1/models").json()["data"]]
                == [False]
            ),
            "the model list to say the model is not loaded",
            10,
        )
        chat = httpx.post(
            f"{node.url}/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "max_tokens": 4},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
        )
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
        wait_for(lambda: state() == "ready", "the engine to be awake again", 30)
        print(f"\nengine memory: {awake / 2**20:.0f} MiB awake, {asleep / 2**20:.0f} MiB asleep")
        assert asleep < awake / 2
        assert "is asleep (unloaded until the next request)" in node.log()
    finally:
        node.stop()


def test_sigterm_stops_the_child_before_fognode_exits(tmp_path: Path) -> None:
    node = launch_embedded_node(tmp_path)
    try:
        node.wait_ready()
        child = llama_child(node)
        assert node.stop(signal.SIGTERM) == 0
        assert not alive(child) and llama_children(node.pid) == []
        assert "llama.cpp server stopped" in node.log()
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
