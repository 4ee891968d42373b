"""JSON from untrusted sources, with a bound on how deeply it nests.

Python's ``json`` module recurses once per level of nesting: a body of a
hundred thousand ``[`` (200 KB, well under any size limit) or a JWT header
nested a few thousand levels deep raises ``RecursionError`` from deep inside
the parser, which callers do not expect and which turned such input into a
500. Every parser of untrusted JSON in fognode (request bodies, bearer
tokens, upstream answers) goes through :func:`loads`, which measures the
nesting first, cheaply, and refuses what is deeper than the bound with
:class:`JsonTooDeep`, a ``ValueError`` like any other malformed JSON.

Its own package because both the gateway and the auth step parse untrusted
JSON, and those two must not import each other.
"""

from __future__ import annotations

import json
from typing import Any

# Real documents nest a handful of levels (an OpenAI request with a tool's JSON
# schema: about 15; a Firebase ID token's claims: 4).
MAX_DEPTH = 64

# Both kinds of bracket become parentheses and everything else is dropped:
# one kind of pair means one bytes.replace removes exactly one level.
_TO_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')


class JsonTooDeep(ValueError):
    """The document nests deeper than the bound."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"JSON nested deeper than {max_depth} levels")
        self.max_depth = max_depth


def check_depth(data: bytes | str, max_depth: int = MAX_DEPTH) -> None:
    """Raise JsonTooDeep if ``data`` nests arrays and objects deeper than ``max_depth``.

    Runs at C speed over the bytes (no regular expression, no Python loop
    per byte): strings are cut out (brackets inside them do not count),
    everything but brackets is dropped, and then each pass of
    ``bytes.replace`` removes the innermost pairs, one level per pass. What
    is left after ``max_depth`` passes was deeper. Input that is not
    balanced is left for the JSON parser to refuse with its own message.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return  # cannot nest deeper than it has openers: nearly every request
    # Drop escaped characters (an escaped backslash first, so that in \\" the
    # quote still ends the string), then every other quote-delimited stretch.
    # Only brackets and quotes matter from then on, which makes the rest short.
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = unescaped.translate(None, _NOT_STRUCTURE)
    outside_strings = b"".join(structure.split(b'"')[::2])
    parens = outside_strings.translate(_TO_PARENS)
    for level in range(max_depth):
        if not parens:
            return
        if b"(" * (max_depth - level + 1) in parens:
            # A run of openers that long is too deep by itself (and is what
            # makes bytes.replace slow, so look for it first).
            raise JsonTooDeep(max_depth)
        reduced = parens.replace(b"()", b"")
        if len(reduced) == len(parens):
            return  # unbalanced: not JSON, and json.loads will say so
        parens = reduced
    if b"()" in parens:
        raise JsonTooDeep(max_depth)


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for untrusted input: ValueError (JsonTooDeep included)
    for anything that is not JSON within the nesting bound."""
    check_depth(data, max_depth)
    try:
        return json.loads(data)
    except RecursionError:  # the bound is far below the stack; kept as a backstop
        raise JsonTooDeep(max_depth) from None
