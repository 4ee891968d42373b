"""Which models an upstream has in memory ("hot"), from what it reports.

Ollama lists its loaded models at ``/api/ps``, each with the memory it takes
(``size``, of which ``size_vram`` on a GPU) and when it will be unloaded
(``expires_at``: its keep_alive, 5 minutes after the last request by
default). An OpenAI-compatible server (llama.cpp's, vLLM) holds the model
it serves for as long as it runs and reports nothing more, so its served
models count as hot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..moments import parse_moment


@dataclass(frozen=True)
class LoadedModel:
    name: str
    size: int | None = None  # bytes in memory
    size_vram: int | None = None  # of those, in GPU memory
    expires_at: str | None = None  # when it is unloaded, as the upstream wrote it
    expires: float | None = None  # the same as a Unix time; None: not known, or never

    def hot(self, now: float) -> bool:
        """Still in memory at ``now`` (Ollama unloads it at its expiry)."""
        return self.expires is None or self.expires > now


def parse_time(text: str) -> float | None:
    """An RFC 3339 time (``2025-06-04T14:38:31.837530019-07:00``) as a Unix
    time; None when it does not read (the model then counts as loaded)."""
    try:
        return parse_moment(text)
    except ValueError:
        return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def from_ollama_ps(body: object) -> dict[str, LoadedModel]:
    """Ollama's ``/api/ps`` answer, by model name; entries it cannot read are skipped."""
    entries = body.get("models") if isinstance(body, dict) else None
    loaded: dict[str, LoadedModel] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name") or entry.get("model")
        if not isinstance(name, str) or not name:
            continue
        expires_at = entry.get("expires_at")
        expires_at = expires_at if isinstance(expires_at, str) else None
        loaded[name] = LoadedModel(
            name,
            size=_int(entry.get("size")),
            size_vram=_int(entry.get("size_vram")),
            expires_at=expires_at,
            expires=parse_time(expires_at) if expires_at else None,
        )
    return loaded


def served(names: Iterable[str]) -> dict[str, LoadedModel]:
    """What an OpenAI-compatible server serves: loaded while it runs."""
    return {name: LoadedModel(name) for name in names}


def find(loaded: Mapping[str, LoadedModel], name: str) -> LoadedModel | None:
    """The entry for ``name``; a name without a tag is Ollama's ``name:latest``."""
    found = loaded.get(name)
    if found is None and ":" not in name:
        found = loaded.get(f"{name}:latest")
    return found
