"""Embedded model: the llama.cpp model fognode runs itself when no upstream is there.

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    Field,
)


class EmbeddedSettings(BaseModel):
    """Embedded model: the llama.cpp model fognode runs itself when no upstream is there."""

    embedded_model: str | None = Field(
        None,
        description="What the embedded llama.cpp server runs: a packaged model by name "
        "(`smollm2:135m`, SmolLM2 135M Instruct, the default; `gemma3:270m`, Gemma 3 270M, "
        "pretrained, installed with the test tools) or the path of a GGUF file.",
    )
    embedded_model_alias: str | None = Field(
        None,
        min_length=1,
        description="Model name clients ask for (`/v1/models`, mDNS `models`). Default: a "
        "packaged model's name (Ollama's name for it), else the file name without `.gguf`. "
        "For SpeziLLMFog apps use letters, digits, `_` and `:` only: the app recognises "
        "a missing model only for such names.",
    )
    embedded_chat_format: str | None = Field(
        None,
        description="llama-cpp-python chat format (`chatml`, `gemma`, `llama-3`, ...). "
        "Default: the chat template stored in the GGUF file (`gemma` for gemma3:270m, whose "
        "file has none).",
    )
    embedded_context_size: int = Field(
        4096,
        ge=256,
        description="Context window of the embedded model, in tokens (prompt and answer together).",
    )
    embedded_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads per llama.cpp server process. Default: the cores divided "
        "by `embedded_parallel`.",
    )
    embedded_parallel: int = Field(
        1,
        ge=1,
        le=64,
        description="Parallel slots: llama.cpp server processes, each answering one request "
        "at a time (they share the model file's pages). Also the default "
        "`max_concurrent_requests` when the embedded model serves.",
    )
    embedded_start_timeout: float = Field(
        600,
        gt=0,
        description="Seconds a llama.cpp server process may take to load the model before it "
        "is killed and restarted.",
    )
