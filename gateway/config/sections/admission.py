"""Admission control: how many inference requests run and wait.

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from pydantic import (
    BaseModel,
    Field,
)


class AdmissionSettings(BaseModel):
    """Admission control: how many inference requests run and wait."""

    max_concurrent_requests: int = Field(
        4,
        ge=1,
        description="Inference requests sent upstream at once (for Ollama: "
        "`OLLAMA_NUM_PARALLEL` times the models you keep loaded; with the embedded model the "
        "default is `embedded_parallel`). The `load` TXT field's capacity.",
    )
    max_queued_requests: int = Field(
        64,
        ge=0,
        description="Requests waiting for a slot (FIFO); beyond that: 503 `node_busy` with "
        "`Retry-After`.",
    )
    per_user_concurrent_requests: int = Field(
        2, ge=1, description="Inference requests one user (uid or API key) may run at once."
    )
    per_user_queued_requests: int = Field(
        8,
        ge=0,
        description="Requests one user may have waiting; beyond that: 429 "
        "`user_concurrency_limit`.",
    )
    queue_timeout: float = Field(
        120, gt=0, description="Longest wait in the queue before a 503 `queue_timeout`."
    )
