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
    embedded_chat_template: str | None = Field(
        None,
        min_length=1,
        description="A Jinja chat template that replaces the one stored in the GGUF file: "
        "the template's text, or the path of a file holding it (a value without `{` is taken "
        "as a path). Default: the file's own; for gemma3:270m, whose file has none, Gemma's "
        "turn format (embedded/templates/gemma.jinja). A file without a template and without "
        "this setting gets llama.cpp's ChatML.",
    )
    embedded_context_size: int = Field(
        4096,
        ge=256,
        description="Context window of each slot of the embedded model, in tokens (prompt "
        "and answer together). The engine allocates slots times this for its KV cache.",
    )
    embedded_parallel: int = Field(
        4,
        ge=1,
        le=64,
        description="Parallel slots of the embedded model: requests llama.cpp's server "
        "decodes together (continuous batching) in one process over one copy of the model; "
        "each added slot costs its KV cache (`embedded_context_size` tokens), not another "
        "copy of the model. Also the default `max_concurrent_requests` when the embedded "
        "model serves, so further requests wait in fognode's queue.",
    )
    embedded_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads of the embedded llama.cpp server, for generating and for "
        "reading prompts (all slots share them). Default: one per core (bench/README.md, the "
        "embedded engine: threads).",
    )
    embedded_gpu_layers: int | None = Field(
        None,
        ge=-1,
        description="Layers of the model to put on the GPU: 0 keeps everything on the CPU, "
        "-1 or unset lets llama.cpp decide (all that fit). Only matters with an xllamacpp "
        "wheel that has a GPU backend (CUDA, ROCm, Vulkan or Metal; docs/embedded.md); the "
        "CPU wheel setup.sh installs has none.",
    )
    embedded_idle_seconds: float = Field(
        0,
        ge=0,
        description="Seconds without a request after which the embedded engine unloads the "
        "model (and its caches) to free memory; the next request loads it again and waits "
        "for that. The status page says `asleep`. 0: never.",
    )
    embedded_prompt_cache_mib: int = Field(
        256,
        ge=0,
        description="Host memory, in MiB, for llama.cpp's prompt cache: a conversation's "
        "processed prompt is kept there when its slot is taken by another, so its next turn "
        "does not read the whole history again. 0: off (a slot keeps only its last prompt).",
    )
    embedded_start_timeout: float = Field(
        600,
        gt=0,
        description="Seconds the llama.cpp server may take to load the model before it is "
        "killed and restarted.",
    )
