"""What a fog member tells the others about itself: one typed message.

Members ask each other for it every second or two (``GET /fog/state`` on
the peer port, mutual TLS), so it says only what placement needs: which
models the node has and which are in memory, how many requests it can
start now and how many wait, how long a first token takes there lately,
and whether it is draining. It is validated as it arrives: a member is
authenticated, but its software may be older or newer, so fields this
version does not know are ignored and missing ones are refused.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PeerState(BaseModel):
    """One node's state, as it serves it to the other members."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    node: str = Field(min_length=1, max_length=128)  # its node id (TXT `id`)
    name: str = Field("", max_length=255)  # what the operator calls it (its host name)
    version: str = Field("", max_length=64)  # fognode's version
    models: tuple[str, ...] = ()  # the models its upstreams have
    loaded: tuple[str, ...] = ()  # of those, the ones in memory now
    capacity: int = Field(ge=0)  # inference slots in all
    active: int = Field(ge=0)  # slots in use
    queued: int = Field(ge=0)  # requests waiting for a slot
    free_slots: int = Field(ge=0)  # requests it can start now
    wait: float = Field(0.0, ge=0)  # seconds a new request would wait for a slot there
    ttft: float | None = Field(None, ge=0)  # recent time to first token there, seconds
    draining: bool = False  # takes no new work: never forward to it

    def has(self, model: str) -> bool:
        return _listed(model, self.models)

    def holds(self, model: str) -> bool:
        """The model is in its memory: it answers without loading it first."""
        return _listed(model, self.loaded)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PeerState:
        """Raises ``ValueError`` (pydantic's ValidationError is one) for a body
        that is not a state."""
        return cls.model_validate_json(data)


def _listed(model: str, names: tuple[str, ...]) -> bool:
    """Ollama's ``name`` is its ``name:latest``."""
    return model in names or (":" not in model and f"{model}:latest" in names)
