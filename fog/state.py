"""What a fog member tells the others about itself: one typed message.

Members ask each other for it every second or two (``GET /fog/state`` on
the peer port, mutual TLS), so it says only what placement needs: which
models the node has and which are in memory, how many requests it can
start now and how many wait, how long a first token takes there lately,
and whether it is draining. It is checked as it arrives: a member is
authenticated, but its software may be older or newer, so keys this
version does not know are ignored and a missing or mistyped one refuses
the whole state. A frozen dataclass, so that the same declaration also
crosses the channel between a node's processes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .. import safejson

_MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class PeerState:
    """One node's state, as it serves it to the other members."""

    node: str  # its node id (TXT `id`)
    capacity: int  # inference slots in all
    active: int  # slots in use
    queued: int  # requests waiting for a slot
    free_slots: int  # requests it can start now
    name: str = ""  # what the operator calls it (its host name)
    version: str = ""  # fognode's version
    models: tuple[str, ...] = ()  # the models its upstreams have
    loaded: tuple[str, ...] = ()  # of those, the ones in memory now
    wait: float = 0.0  # seconds a new request would wait for a slot there
    ttft: float | None = None  # recent time to first token there, seconds
    draining: bool = False  # takes no new work: never forward to it

    def __post_init__(self) -> None:
        if not self.node or len(self.node) > 128 or len(self.name) > _MAX_NAME:
            raise ValueError("a state names its node (at most 128 characters)")
        counts = (self.capacity, self.active, self.queued, self.free_slots)
        if any(n < 0 for n in counts) or self.wait < 0 or (self.ttft or 0) < 0:
            raise ValueError("a state's counts and times are not negative")

    def has(self, model: str) -> bool:
        return _listed(model, self.models)

    def holds(self, model: str) -> bool:
        """The model is in its memory: it answers without loading it first."""
        return _listed(model, self.loaded)

    def as_dict(self) -> dict[str, Any]:
        """The state as JSON values (lists for the model names)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: object) -> PeerState:
        """Raises ``ValueError`` for anything that is not a state."""
        if not isinstance(data, dict):
            raise ValueError("a state is a JSON object")
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in data:
                if field.default is dataclasses.MISSING:
                    raise ValueError(f"a state needs {field.name}")
                continue
            values[field.name] = _checked(field.name, data[field.name], field.type)
        return cls(**values)

    @classmethod
    def from_json(cls, body: bytes | str) -> PeerState:
        return cls.from_dict(safejson.loads(body))


def _checked(name: str, value: Any, kind: object) -> Any:
    """``value`` as the field's declared type (written as text: annotations)."""
    ok: bool
    if kind == "str":
        ok = isinstance(value, str)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind in ("float", "float | None"):
        if value is None and kind == "float | None":
            return None
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:  # tuple[str, ...]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    if not ok:
        raise ValueError(f"a state's {name} is not a {kind}")
    return value


def _listed(model: str, names: tuple[str, ...]) -> bool:
    """Ollama's ``name`` is its ``name:latest``."""
    return model in names or (":" not in model and f"{model}:latest" in names)
