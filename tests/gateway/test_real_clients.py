"""The official OpenAI and Ollama Python clients, and curl, used as users use them."""

from __future__ import annotations

import asyncio

import ollama
import openai
import pytest

from fognode.gateway.node.server import RunningServer
from tests.support.gateway import GatewayFactory
from tests.support.ollama_standin import OllamaStandIn

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


def openai_client(gateway: RunningServer) -> openai.AsyncOpenAI:
    # The gateway needs no key yet; the SDK insists on one being set.
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)


async def test_openai_sdk_chat_streaming_and_not(
    gateway: RunningServer, standin: OllamaStandIn
) -> None:
    client = openai_client(gateway)
    completion = await client.chat.completions.create(model="llama3.2:1b", messages=MESSAGES)
    assert completion.choices[0].message.content == standin.reply
    assert completion.choices[0].finish_reason == "stop"

    stream = await client.chat.completions.create(
        model="llama3.2:1b",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts) == standin.reply
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == len(standin.reply.split())
    await client.close()


async def test_openai_sdk_completions_embeddings_models(
    gateway: RunningServer, standin: OllamaStandIn
) -> None:
    client = openai_client(gateway)
    completion = await client.completions.create(model="llama3.2:1b", prompt="Once")
    assert completion.choices[0].text == standin.reply
    embedding = await client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) == 8
    models = [m.id async for m in client.models.list()]
    assert models == list(standin.models)
    model = await client.models.retrieve("llama3.2:1b")
    assert model.id == "llama3.2:1b"
    await client.close()


async def test_openai_sdk_sees_model_not_found_as_404_with_ollamas_words(
    gateway: RunningServer,
) -> None:
    client = openai_client(gateway)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="missing:7b", messages=MESSAGES)
    assert "model 'missing:7b' not found, try pulling it first" in str(caught.value)
    await client.close()


async def test_openai_sdk_sees_validation_error_as_400(gateway: RunningServer) -> None:
    client = openai_client(gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="llama3.2:1b", messages=MESSAGES, temperature=5)
    assert caught.value.param == "temperature"  # type: ignore[attr-defined]
    await client.close()


async def test_openai_sdk_raises_on_a_mid_stream_failure(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    standin.die_after = 3
    gateway = await make_gateway(standin.url)
    client = openai_client(gateway)
    stream = await client.chat.completions.create(
        model="llama3.2:1b", messages=MESSAGES, stream=True
    )
    received = []
    with pytest.raises(openai.APIError) as caught:
        async with asyncio.timeout(10):
            async for chunk in stream:
                received.append(chunk)
    assert len(received) == 3
    assert "broke off" in str(caught.value)
    await client.close()


async def test_ollama_client_chat_generate_embed_list_show_ps(
    gateway: RunningServer, standin: OllamaStandIn
) -> None:
    client = ollama.AsyncClient(host=gateway.url)
    reply = await client.chat(model="llama3.2:1b", messages=MESSAGES)
    assert reply.message.content == standin.reply
    parts = []
    async for part in await client.chat(model="llama3.2:1b", messages=MESSAGES, stream=True):
        parts.append(part.message.content)
    assert "".join(parts) == standin.reply
    generated = await client.generate(model="llama3.2:1b", prompt="hi")
    assert generated.response == standin.reply
    streamed = [
        p.response
        async for p in await client.generate(model="llama3.2:1b", prompt="hi", stream=True)
    ]
    assert "".join(streamed) == standin.reply
    embedded = await client.embed(model="nomic-embed-text", input=["a", "b"])
    assert len(embedded.embeddings) == 2
    listed = await client.list()
    assert [m.model for m in listed.models] == list(standin.models)
    shown = await client.show("llama3.2:1b")
    assert shown.details is not None and shown.details.family == "llama"
    # Ollama keeps what it just served in memory: the two models used above.
    running = await client.ps()
    assert sorted(m.model for m in running.models) == ["llama3.2:1b", "nomic-embed-text:latest"]
    assert all(m.size_vram is not None and m.expires_at is not None for m in running.models)


async def test_ollama_client_sees_model_not_found(gateway: RunningServer) -> None:
    client = ollama.AsyncClient(host=gateway.url)
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model="missing:7b", messages=MESSAGES)
    assert caught.value.status_code == 404
    assert caught.value.error == "model 'missing:7b' not found, try pulling it first"


async def test_ollama_client_raises_on_a_mid_stream_failure(
    standin: OllamaStandIn, make_gateway: GatewayFactory
) -> None:
    standin.die_after = 2
    gateway = await make_gateway(standin.url)
    client = ollama.AsyncClient(host=gateway.url)
    with pytest.raises(ollama.ResponseError) as caught:
        async with asyncio.timeout(10):
            async for _ in await client.chat(model="llama3.2:1b", messages=MESSAGES, stream=True):
                pass
    assert "broke off" in str(caught.value)
