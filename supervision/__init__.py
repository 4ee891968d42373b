"""Keeping child processes running: the restart policy, dying with the parent, the cores.

Two parts of fognode keep processes of their own running, as a service
manager would: embedded/ llama.cpp's server process, workers/ the
gateway's worker processes. Both restart a child that exits unasked after a
backoff (:mod:`.restart`), both start children that must not outlive the
process that started them (:func:`die_with_parent`), and the gateway sizes
both by the CPUs this process may use (:func:`cores`).

A leaf, as safejson/ is: it imports no other part, so that embedded/ and
workers/, which must not import each other, can both use it.
"""

from __future__ import annotations

from .process import cores, die_with_parent
from .restart import Backoff, RestartPolicy, pause

__all__ = ["Backoff", "RestartPolicy", "cores", "die_with_parent", "pause"]
