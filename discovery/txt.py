"""The TXT record: what a node tells clients before they connect.

DNS-SD TXT strings are at most 255 bytes each and the whole record should
stay well under a packet (RFC 6763 section 6.2 suggests under 1300 bytes),
so the model list is cut to fit and its full length is given separately.

Keys (all optional for a reader; unknown keys are ignored):

    txtvers  1
    path     API base path, "/v1"
    api      "openai,ollama" (the API families served)
    ver      fognode version
    id       stable node id (survives restarts and renames)
    models   comma-separated model names Ollama has, cut to fit 255 bytes
    nmodels  how many models there are in total
    hot      comma-separated names of the models loaded in memory now (they
             answer without loading first), cut to fit 255 bytes like models
    nhot     how many models are loaded in total
    load     "<in flight>/<capacity>" inference requests (admission slots)
    queue    requests waiting for a slot
    auth     "firebase", "apikey", "firebase+apikey" or "none"
    ca       SHA-256 fingerprint (hex, no colons) of the CA that signs the
             node's certificate; a client pins its CA and skips nodes whose
             fingerprint differs (TXT is unauthenticated, TLS is not)
    fog      the node's peer port, when it is a member of a fog: where other
             members ask it (mutual TLS decides who is one, not this key)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TXT_VERSION = "1"
MAX_VALUE = 255


def _fit_models(models: Sequence[str], budget: int) -> str:
    kept: list[str] = []
    used = 0
    for name in models:
        cost = len(name.encode()) + (1 if kept else 0)
        if used + cost > budget:
            break
        kept.append(name)
        used += cost
    return ",".join(kept)


@dataclass(frozen=True)
class NodeTxt:
    path: str = "/v1"
    api: str = "openai,ollama"
    version: str = ""
    node_id: str = ""
    models: tuple[str, ...] = ()
    model_count: int = 0
    hot: tuple[str, ...] | None = None  # None: the node does not say (not a fognode)
    hot_count: int = 0
    load_active: int = 0
    load_capacity: int = 0
    queued: int = 0
    auth: str = ""
    ca_sha256: str = ""
    fog_port: int = 0  # the peer port; 0: not a member of a fog
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_properties(self) -> dict[str, str]:
        props = {
            "txtvers": TXT_VERSION,
            "path": self.path,
            "api": self.api,
            "ver": self.version,
            "id": self.node_id,
            "models": _fit_models(self.models, MAX_VALUE - len("models=")),
            "nmodels": str(self.model_count or len(self.models)),
            "load": f"{self.load_active}/{self.load_capacity}",
            "queue": str(self.queued),
            "auth": self.auth,
        }
        if self.hot is not None:
            props["hot"] = _fit_models(self.hot, MAX_VALUE - len("hot="))
            props["nhot"] = str(self.hot_count or len(self.hot))
        if self.ca_sha256:
            props["ca"] = self.ca_sha256
        if self.fog_port:
            props["fog"] = str(self.fog_port)
        return props

    @classmethod
    def from_properties(cls, props: Mapping[Any, bytes | str | None]) -> NodeTxt:
        text: dict[str, str] = {}
        for key, value in props.items():
            k = key.decode(errors="replace") if isinstance(key, bytes) else key
            if value is None:
                v = ""
            else:
                v = value.decode(errors="replace") if isinstance(value, bytes) else value
            text[k.lower()] = v
        active, _, capacity = text.get("load", "0/0").partition("/")
        models = tuple(m for m in text.get("models", "").split(",") if m)
        hot = tuple(m for m in text.get("hot", "").split(",") if m)
        says_hot = "hot" in text or "nhot" in text
        known = {
            "txtvers",
            "path",
            "api",
            "ver",
            "id",
            "models",
            "nmodels",
            "hot",
            "nhot",
            "load",
            "queue",
            "auth",
            "ca",
            "fog",
        }
        return cls(
            path=text.get("path", "/v1") or "/v1",
            api=text.get("api", ""),
            version=text.get("ver", ""),
            node_id=text.get("id", ""),
            models=models,
            model_count=_int(text.get("nmodels"), len(models)),
            hot=hot if says_hot else None,
            hot_count=_int(text.get("nhot"), len(hot)),
            load_active=_int(active, 0),
            load_capacity=_int(capacity, 0),
            queued=_int(text.get("queue"), 0),
            auth=text.get("auth", ""),
            ca_sha256=text.get("ca", "").replace(":", "").upper(),
            fog_port=_int(text.get("fog"), 0),
            extra={k: v for k, v in text.items() if k not in known},
        )

    @property
    def load_ratio(self) -> float:
        """0 for idle; above 1 when requests queue. Unknown capacity counts as idle."""
        if self.load_capacity <= 0:
            return 0.0
        return (self.load_active + self.queued) / self.load_capacity

    def has_model(self, name: str) -> bool | None:
        """True/False when the list is complete enough to tell, None when cut."""
        return _listed(name, self.models, self.model_count)

    def is_hot(self, name: str) -> bool | None:
        """Loaded in memory now: True/False when the list tells; None when it is
        cut, or the node does not announce it (an older fognode, the reference)."""
        if self.hot is None:
            return None
        return _listed(name, self.hot, self.hot_count)


def _listed(name: str, names: tuple[str, ...], total: int) -> bool | None:
    """Is ``name`` (or Ollama's ``name:latest``) in a list cut to fit: None when
    it is not in what was kept and more was left out."""
    wanted = {name, name if ":" in name else f"{name}:latest"}
    if wanted & set(names):
        return True
    return False if len(names) >= total else None


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
