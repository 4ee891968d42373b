"""The one message from fognode to its engine process: how to run llama.cpp's server.

The parent decides everything (model file, port, slots, threads, template)
and the child only applies it, so the child's behaviour is visible in one
value. It travels as JSON on the child's command line (no secrets in it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .options import EmbeddedOptions

# Sampling the embedded model has always had (llama-cpp-python's server
# default); llama.cpp's own default is 1.0, which lets a small model loop.
REPEAT_PENALTY = 1.1


@dataclass(frozen=True)
class EngineConfig:
    """llama.cpp server parameters, by their llama.cpp meaning."""

    model_path: str
    alias: str
    port: int
    slots: int  # parallel sequences decoded together (continuous batching)
    context_per_slot: int
    threads: int  # for generation and for prompt processing
    gpu_layers: int | None  # None: llama.cpp's default (auto)
    idle_seconds: int  # -1: never sleep
    prompt_cache_mib: int
    chat_template: str | None  # Jinja text; None: the one in the model file
    repeat_penalty: float = REPEAT_PENALTY

    @classmethod
    def build(
        cls, options: EmbeddedOptions, model: Path, port: int, template: str | None
    ) -> EngineConfig:
        return cls(
            model_path=str(model),
            alias=options.model_alias,
            port=port,
            slots=options.slots,
            context_per_slot=options.context_size,
            threads=options.engine_threads,
            gpu_layers=options.gpu_layers,
            idle_seconds=round(options.idle_seconds) if options.idle_seconds > 0 else -1,
            prompt_cache_mib=options.prompt_cache_mib,
            chat_template=template,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EngineConfig:
        data: Any = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the engine configuration is not a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown engine parameters: {', '.join(sorted(unknown))}")
        return cls(**data)
