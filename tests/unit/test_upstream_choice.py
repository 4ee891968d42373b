"""Which upstream serves: the settings that cannot go together, and the embedded
model's loading line on a terminal (no child started)."""

from __future__ import annotations

import asyncio
import io
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from fognode.embedded.options import EmbeddedOptions
from fognode.embedded.progress import show_startup
from fognode.embedded.supervisor import LlamaServer, State
from fognode.gateway.config.settings import Settings
from tests.support.embedded_node import MODEL
from tests.support.helpers import free_port, wait_until


def test_embedded_together_with_an_upstream_url_is_a_settings_error() -> None:
    with pytest.raises(ValidationError, match="upstream_kind=embedded"):
        Settings(upstream_kind="embedded", upstream_url="http://10.0.0.5:11434")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_loading_progress_is_one_live_line_on_a_terminal(tmp_path: Path) -> None:
    server = LlamaServer(EmbeddedOptions(models_dir=tmp_path), port=free_port())
    server.state, server.phase = State.STARTING, "loading the weights"
    out = _Terminal()
    handler = logging.StreamHandler(out)
    logging.getLogger().addHandler(handler)
    try:
        task = asyncio.create_task(show_startup(server, MODEL, out))
        await wait_until(lambda: "loading the weights" in out.getvalue(), "a progress frame")
        logging.getLogger("fognode.test").warning("a log line while loading")
        server.state = State.READY
        await asyncio.wait_for(task, 10)
    finally:
        logging.getLogger().removeHandler(handler)
    text = out.getvalue()
    assert f"Loading {MODEL} with llama.cpp: loading the weights" in text
    # The live line is wiped before the log line and at the end.
    assert "\r\033[Ka log line while loading" in text
    assert text.endswith("\r\033[K")
