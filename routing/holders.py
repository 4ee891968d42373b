"""Who can serve model m: the one answer the model check and the rule share.

A request for a model that no upstream of the node has gets the app's
"model 'x' not found, try pulling it first" at once, before it takes a place
in the queue; a request for a model that some option has goes on. The
answer comes from the model lists the pool's checks fetched (each upstream's
``/api/tags`` or ``/v1/models``; for the fog, each peer's state), so it costs
no request. Only a list that is known can say "not here": while some option's
list is unknown (not checked yet, never answered) nobody can say the model
is missing, and the request goes on as before.

Names are compared the way Ollama resolves them (types/model/name.go): case
does not matter, the default host ``registry.ollama.ai`` and namespace
``library`` may be left out, and a name without a tag means ``:latest``. So
``Llama3.2`` and ``registry.ollama.ai/library/llama3.2:latest`` are the same
model; ``llama3.2:1b`` and ``llama3.2`` are not. For servers that are not
Ollama this errs on the side of "has it", which at worst forwards a request
that the upstream then answers with its own 404.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


def model_key(name: str) -> str:
    """The form under which two names of one model compare equal."""
    text = name.strip().lower()
    text = text.split("@", 1)[0]  # a digest pins a version; the name is what is listed
    path, colon, tag = text.rpartition(":")
    if not colon or "/" in tag:  # no tag (a colon before a slash is a host's port)
        path, tag = text, DEFAULT_TAG
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == DEFAULT_HOST:
        parts = parts[1:]
    if len(parts) == 2 and parts[0] == DEFAULT_NAMESPACE:
        parts = parts[1:]
    return "/".join(parts) + ":" + (tag or DEFAULT_TAG)


def model_keys(names: Iterable[str]) -> frozenset[str]:
    return frozenset(model_key(n) for n in names)


@dataclass(frozen=True)
class Holders:
    """Which options can serve a model: by their positions."""

    listed: tuple[int, ...]  # their model list has it
    unknown: tuple[int, ...]  # their model list is not known

    @property
    def missing(self) -> bool:
        """Every option's list is known, and none has the model: it is not here."""
        return not self.listed and not self.unknown


def holders(model: str, lists: Sequence[Collection[str] | None]) -> Holders:
    """``lists``: each option's model keys (:func:`model_keys`), None where unknown."""
    key = model_key(model)
    return Holders(
        listed=tuple(i for i, keys in enumerate(lists) if keys is not None and key in keys),
        unknown=tuple(i for i, keys in enumerate(lists) if keys is None),
    )
