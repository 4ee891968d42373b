"""A fog of nodes for the tests: its CA (with a node certificate for each member),
the keys its phones and its operator use, and a chat as a phone sends it."""

from __future__ import annotations

import json
import ssl
from typing import Protocol

import aiohttp
import pytest

from tests.support.pki import Pki, make_pki

USER_KEY = "fnk_" + "u" * 43
ADMIN_KEY = "fnk_" + "a" * 43
SMALL, OTHER = "llama3.2:1b", "qwen2.5:0.5b"


@pytest.fixture(scope="module")
def fog_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("fog-pki"))


def client_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.check_hostname = False  # the node's certificate names spezillmfog.local
    return ctx


class Served(Protocol):
    @property
    def url(self) -> str: ...


async def chat(
    http: aiohttp.ClientSession, node: Served, pki: Pki, model: str, *, key: str = USER_KEY
) -> tuple[int, dict[str, str], str]:
    """One streamed chat as a phone sends it; the status, headers and the text."""
    async with http.post(
        f"{node.url}/v1/chat/completions",
        json={"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        ssl=client_context(pki),
    ) as response:
        body = await response.text()
        text = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in body.splitlines()
            if line.startswith("data: {") and json.loads(line[6:]).get("choices")
        )
        return response.status, dict(response.headers), text if response.status == 200 else body
