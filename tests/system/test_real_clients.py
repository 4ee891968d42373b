"""curl, a client program of its own, streams a chat completion from the gateway."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from fognode.gateway.node.server import RunningServer
from tests.support.ollama_standin import OllamaStandIn

MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by setup.sh")
async def test_curl_streams_a_chat_completion(
    gateway: RunningServer, standin: OllamaStandIn
) -> None:
    body = json.dumps({"model": "llama3.2:1b", "stream": True, "messages": MESSAGES})
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "-N",
        "--fail-with-body",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        f"{gateway.url}/v1/chat/completions",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    events = [e.removeprefix("data: ") for e in out.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == standin.reply
