"""Living with things that fail: the restart policy, dying with the parent,
the cores, the circuit breaker.

Two parts of fognode keep processes of their own running, as a service
manager would: embedded/ llama.cpp's server process, workers/ the
gateway's worker processes. Both restart a child that exits unasked after a
backoff (:mod:`.restart`), both start children that must not outlive the
process that started them (:func:`die_with_parent`), and the gateway sizes
both by the CPUs this process may use (:func:`cores`). Two parts send work
to places that may be gone: the gateway's upstreams and fog/'s members.
Both take a failing place out and bring it back with one breaker
(:mod:`.breaker`).

A leaf, as safejson/ is: it imports no other part, so that parts which must
not import each other (embedded/ and workers/, fog/ and the gateway's
upstreams) can all use it.
"""

from __future__ import annotations

from .breaker import Breaker, BreakerOptions
from .process import cores, die_with_parent
from .restart import Backoff, RestartPolicy, pause

__all__ = [
    "Backoff",
    "Breaker",
    "BreakerOptions",
    "RestartPolicy",
    "cores",
    "die_with_parent",
    "pause",
]
