"""Admission control: how many inference requests run and wait.

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    BaseModel,
    Field,
    model_validator,
)
from pydantic_settings import NoDecode


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
    priority_classes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["interactive", "batch"],
        description="Priority classes, highest first (comma-separated or JSON list): when a "
        "slot frees, the waiting request of the highest class goes first, first come first "
        "served within a class. A request's class is its API key's, its Firebase "
        "`priority_class_claim`, its tier's (`priority_tier_classes`), or the default.",
    )
    priority_default_class: str = Field(
        "interactive",
        min_length=1,
        description="The class of a request that names none (or one not in "
        "`priority_classes`). Unset, with classes of your own: the first of them.",
    )
    priority_max_wait: dict[str, float] = Field(
        default_factory=lambda: {"batch": 30.0},
        description="The longest a request of a class waits while higher classes are served, "
        'in seconds, by class as JSON: `{"batch": 30}`. Once the next free slot would come '
        "later than that, it goes next whatever waits above it, so no class starves. A class "
        "without one (or with one beyond `queue_timeout`) waits for as long as higher classes "
        "wait, up to `queue_timeout`. Unset, with classes of your own: none.",
    )
    priority_class_claim: str = Field(
        "fog_class",
        min_length=1,
        description="Firebase custom claim that names a user's class (`fognode claims set UID "
        "--claim fog_class=batch`).",
    )
    priority_tier_classes: dict[str, str] = Field(
        default_factory=dict,
        description='The class of each tier, as JSON: `{"guest": "batch"}` (tiers: '
        "`quota_tiers`); a key's or a claim's own class comes first.",
    )

    @model_validator(mode="after")
    def _known_classes(self) -> AdmissionSettings:
        names = self.priority_classes
        if not names or len(set(names)) != len(names):
            raise ValueError("priority_classes needs distinct names, at least one")
        # Defaults name the default classes: with classes of one's own they
        # give way (the first class is the default; no maximum waits).
        given = self.model_fields_set
        if "priority_default_class" not in given and self.priority_default_class not in names:
            self.priority_default_class = names[0]
        if "priority_max_wait" not in given:
            self.priority_max_wait = {
                name: wait for name, wait in self.priority_max_wait.items() if name in names
            }
        used = {self.priority_default_class, *self.priority_max_wait}
        unknown = sorted(used.union(self.priority_tier_classes.values()).difference(names))
        if unknown:
            raise ValueError(
                f"priority classes {unknown} are used (priority_default_class, "
                f"priority_max_wait, priority_tier_classes) but not in priority_classes {names}"
            )
        for name, wait in self.priority_max_wait.items():
            if wait < 0:
                raise ValueError(f"priority_max_wait of {name!r} cannot be negative")
        return self
