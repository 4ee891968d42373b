"""What a stream of Ollama pull status lines says so far.

Ollama reports a pull as NDJSON lines (docs/api.md, "Pull a Model"):
`pulling manifest`; then for each layer, one after another, lines
`pulling <first 12 hex of the digest>` with `digest`, `total` and a growing
`completed` (left out while it is 0, and on the layer's first line);
`verifying sha256 digest`, `writing manifest`, maybe `removing unused
layers`, and `success`. A layer already on disk is a single line with
`completed == total`. (A failure is a line `{"error": "..."}`; the client
turns it into an exception before it gets here.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Layer:
    digest: str
    total: int = 0
    completed: int = 0

    @property
    def short(self) -> str:
        """How Ollama names a layer in its status: 12 hex digits of the digest."""
        return self.digest.removeprefix("sha256:")[:12]


@dataclass
class PullProgress:
    status: str = ""
    layers: dict[str, Layer] = field(default_factory=dict)
    current: Layer | None = None  # the layer the latest line was about

    def update(self, line: Mapping[str, Any]) -> None:
        self.status = str(line.get("status", ""))
        digest = line.get("digest")
        if not digest:
            self.current = None
            return
        layer = self.layers.setdefault(str(digest), Layer(str(digest)))
        layer.total = int(line.get("total") or layer.total)
        layer.completed = int(line.get("completed") or 0)
        self.current = layer

    @property
    def done(self) -> bool:
        return self.status == "success"

    @property
    def total_bytes(self) -> int:
        return sum(layer.total for layer in self.layers.values())

    @property
    def completed_bytes(self) -> int:
        return sum(layer.completed for layer in self.layers.values())
