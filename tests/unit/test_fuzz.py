"""Property-based fuzzing of the request models and the body parser (hypothesis),
without a server; the API as served is fuzzed in tests/gateway/test_fuzz.py."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fognode.gateway.core.errors import GatewayError
from fognode.gateway.pipeline.request_models import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    parse_json_object,
    validate_body,
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


FIELDS = st.sampled_from(
    [
        "model",
        "messages",
        "prompt",
        "input",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stop",
        "max_tokens",
        "role",
        "content",
        "seed",
        "encoding_format",
    ]
)


REQUESTS = st.dictionaries(FIELDS | st.text(max_size=8), JSON, max_size=6)


@given(
    body=REQUESTS,
    model=st.sampled_from([ChatCompletionRequest, CompletionRequest, EmbeddingRequest]),
)
@settings(max_examples=400, deadline=None)
def test_request_models_accept_or_refuse_with_a_400(body: dict[str, Any], model: Any) -> None:
    try:
        validate_body(model, body)
    except GatewayError as exc:
        assert exc.status == 400
        assert exc.code in {"missing_required_parameter", "invalid_type", "invalid_value"}
        assert exc.message


@given(raw=st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_bytes_parse_to_an_object_or_a_400(raw: bytes) -> None:
    try:
        parsed = parse_json_object(raw)
    except GatewayError as exc:
        assert exc.status == 400 and exc.code in {"empty_body", "invalid_json", "invalid_encoding"}
    else:
        assert isinstance(parsed, dict)
