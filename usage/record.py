"""What is kept about one inference request, and nothing more.

No prompt, no answer, no credential: the uid the auth step assigned, what
was asked of which upstream, when, how many tokens, and how it ended.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

COLUMNS = (
    "record_id",
    "request_id",
    "node",
    "uid",
    "model",
    "upstream",
    "route",
    "started_at",
    "ended_at",
    "prompt_tokens",
    "completion_tokens",
    "outcome",
    "partial",
    "served_by",
)


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    CLIENT_DISCONNECTED = "client_disconnected"
    UPSTREAM_FAILED = "upstream_failed"
    REJECTED = "rejected"
    # The model named is not on the node (nor, with several upstreams, on any).
    MODEL_NOT_FOUND = "model_not_found"


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One request. Times are Unix seconds (UTC), from the node's clock.

    ``partial``: the answer ended early (client gone, upstream broke), so
    ``completion_tokens`` is the number of content chunks delivered rather
    than the upstream's own figure. ``record_id`` is unique per record and
    makes a batch written twice (a retried flush whose first commit did land)
    count once; ``request_id`` is the gateway's request id, which a client
    may choose, so it is not unique.
    """

    uid: str
    model: str
    upstream: str
    route: str
    started_at: float
    ended_at: float
    prompt_tokens: int
    completion_tokens: int
    outcome: Outcome
    partial: bool
    request_id: str
    node_id: str = ""  # the node that served it (column ``node``)
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # The node whose upstream answered: ``node_id`` itself, or the member of
    # the fog it handed the request to (recorded here, at the entry, once).
    served_by: str = ""

    def row(self) -> tuple[object, ...]:
        """The values in the order of :data:`COLUMNS` (both stores' insert)."""
        return (
            self.record_id,
            self.request_id,
            self.node_id,
            self.uid,
            self.model,
            self.upstream,
            self.route,
            self.started_at,
            self.ended_at,
            self.prompt_tokens,
            self.completion_tokens,
            self.outcome.value,
            self.partial,
            self.served_by,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def counts_as_request(self) -> bool:
        """Rejected requests are recorded but use no budget: a client that
        keeps knocking would otherwise lock itself out for good."""
        return self.outcome is not Outcome.REJECTED
