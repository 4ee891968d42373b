"""safejson measures nesting exactly, whatever the strings hold."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fognode import safejson

# Strings full of what could confuse a bracket count: brackets, quotes, escapes.
TRICKY = st.text(alphabet='[]{}"\\/\n\tab\u00e9', max_size=12)
DOCS = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TRICKY, children, max_size=3),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(doc=DOCS, bound=st.integers(1, 6), ascii_only=st.booleans())
@settings(max_examples=500, deadline=None)
def test_the_bound_holds_exactly(doc: Any, bound: int, ascii_only: bool) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_only)
    if depth(doc) > bound:
        with pytest.raises(safejson.JsonTooDeep):
            safejson.loads(text.encode(), bound)
    else:
        assert safejson.loads(text.encode(), bound) == doc


@pytest.mark.parametrize("levels", [10_000, 1_000_000])
def test_deep_input_is_refused_before_the_parser_recurses(levels: int) -> None:
    for opener, closer in ((b"[", b"]"), (b'{"a":', b"}"), (b"[{}, [", b"]]")):
        with pytest.raises(safejson.JsonTooDeep):
            safejson.loads(opener * levels + closer * levels)


def test_malformed_input_is_left_to_the_parser() -> None:
    for text in (b"[[[", b"]]]", b'"unterminated [[[[', b"{[}]"):
        with pytest.raises(ValueError) as caught:
            safejson.loads(text)
        assert not isinstance(caught.value, safejson.JsonTooDeep)
