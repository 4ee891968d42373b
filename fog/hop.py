"""The one hop: what the entry node tells the member it hands a request to.

The entry node has authenticated the user (their token or API key was
checked there, against that node's keys); the member learns who it is from
this assertion, sent over the peer connection whose mutual TLS proves that
the sender holds a node certificate of this fog. The channel is the
signature: an assertion that did not come over such a connection is never
read (gateway/pipeline/peers.py), so it needs no signature of its own, and
re-verifying the token at the member would fail for API keys, which are
per node. The assertion carries no credential, and the gateway logs none
of these headers.

The assertion also carries the caller's priority class, as the entry node
decided it (from the caller's credential, claims and tier, which only the
entry has): the member queues the request in that class, so a caller is one
identity with one class on every node. A member that does not know the
class queues it in its default class.

A forwarded request is never forwarded again: the member serves it with
its own upstreams or refuses it, so a request makes one hop at most.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

# The headers of a forwarded request (on the peer port only).
HOP = "X-Fognode-Hop"  # the entry node's id
PRINCIPAL = "X-Fognode-Principal"  # {"uid": ..., "kind": ..., "class": ...}
QUEUE = "X-Fognode-Queue"  # "1": it may wait for a slot there (the entry drains or lacks the model)
HEADERS = (HOP, PRINCIPAL, QUEUE)

_MAX_UID = 512
_MAX_CLASS = 64


@dataclass(frozen=True)
class Forwarded:
    """A request an entry node handed to this one."""

    entry: str  # the entry node's id: it records the usage and owns the phone's stream
    uid: str  # the caller, as the entry node authenticated it
    kind: str  # how: "firebase", "api_key", "anonymous"
    may_queue: bool  # else: refuse at once when no slot is free (the entry tries elsewhere)
    priority: str | None = None  # the caller's priority class, as the entry decided it

    def headers(self) -> dict[str, str]:
        asserted = {"uid": self.uid, "kind": self.kind}
        if self.priority is not None:
            asserted["class"] = self.priority
        principal = json.dumps(asserted, ensure_ascii=True)
        return {HOP: self.entry, PRINCIPAL: principal, QUEUE: "1" if self.may_queue else "0"}

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> Forwarded | None:
        """None when the request is not a forwarded one; ``ValueError`` when it
        says it is but the assertion does not read."""
        entry = headers.get(HOP)
        if entry is None:
            return None
        try:
            principal = json.loads(headers.get(PRINCIPAL, ""))
        except ValueError:
            raise ValueError("the principal assertion is not JSON") from None
        uid = principal.get("uid") if isinstance(principal, dict) else None
        kind = principal.get("kind") if isinstance(principal, dict) else None
        if not (isinstance(uid, str) and isinstance(kind, str) and uid and len(uid) <= _MAX_UID):
            raise ValueError("the principal assertion names no caller")
        if not entry.strip() or len(entry) > 128:
            raise ValueError("the hop header names no entry node")
        # An entry node from before classes sends none: the member's default.
        priority = principal.get("class")
        named = isinstance(priority, str) and 0 < len(priority) <= _MAX_CLASS
        if priority is not None and not named:
            raise ValueError("the principal assertion's class is not a class name")
        return cls(entry.strip(), uid, kind, headers.get(QUEUE) == "1", priority)
