"""Validation of OpenAI-style request bodies before they reach Ollama.

The models check what a well-formed request must have (a model name,
messages with known roles, numbers in OpenAI's ranges) and nothing more:
unknown fields are allowed because Ollama and newer clients add their own
(``options``, ``keep_alive``, ``think`` ...). The gateway validates the parsed
JSON but forwards the original bytes, so nothing a client sent is rewritten.

Strict mode is on: ``"0.7"`` is not a temperature. Coercing it here would
only move the failure to Ollama's JSON decoder with a worse message.

Every request OpenAI's document accepts (CreateChatCompletionRequest,
CreateCompletionRequest, CreateEmbeddingRequest: tests/openai_spec/) is
accepted, with these documented exceptions:

* ``model`` must name something (the document allows ``""``): an empty
  name names no model on the node, and OpenAI refuses it too;
* what the document only describes in words is not checked either way
  (a ``tool`` message's ``tool_call_id``, ``n`` beside ``stream``).

Integers may be written as decimals (``"n": 2.0``): JSON has one number
type and the document's integers admit them. Ollama's Go decoder refuses a
decimal where it wants an int, so such a body goes upstream with integers
(compat.py, :func:`~.compat.normalise_request`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ... import safejson
from ..core.errors import GatewayError

ROLES = ("system", "user", "assistant", "tool", "developer", "function")

# The fields whose value OpenAI's document declares an integer, in any of the
# three requests: a decimal with nothing after the point is one of them.
INTEGER_FIELDS = (
    "n",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "top_logprobs",
    "best_of",
    "logprobs",
    "dimensions",
)


def _integral(value: Any) -> Any:
    """``2.0`` is the integer 2 (JSON has one number type); ``2.5`` stays a
    number, which strict validation refuses as an integer."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


Integer = Annotated[int, BeforeValidator(_integral)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


def _non_blank(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    return value


class ContentPart(_Open):
    type: str = Field(min_length=1)
    text: str | None = None


class ChatMessage(_Open):
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: Any = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_shape(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list):
            for index, part in enumerate(value):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise ValueError(f"content part {index} must be an object with a string 'type'")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise ValueError(f"content part {index} of type 'text' needs a string 'text'")
            return value
        raise ValueError("content must be a string, an array of content parts, or null")

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        # The document: an assistant's content is optional (a refusal, tool
        # calls, audio stand for it); a function message's may be null; the
        # others need it.
        if self.role == "assistant":
            return self
        if self.role == "function":
            if "content" not in self.model_fields_set:
                raise ValueError("a 'function' message needs 'content' (null is allowed)")
            return self
        if self.content is None:
            raise ValueError(f"a '{self.role}' message needs 'content'")
        return self


class _SamplingParams(_Open):
    """Ranges as OpenAI documents them; Ollama accepts the same."""

    model: str
    stream: bool | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: Integer | None = Field(None, ge=1, le=128)
    max_tokens: Integer | None = Field(None, ge=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: Integer | None = None
    stop: Any = None
    user: str | None = None
    stream_options: dict[str, Any] | None = None

    @field_validator("model")
    @classmethod
    def _model_non_blank(cls, value: str) -> str:
        return _non_blank(value, "model")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_shape(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise ValueError("stop must be a string or an array of strings")


class ChatCompletionRequest(_SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Integer | None = Field(None, ge=0)
    logprobs: bool | None = None
    top_logprobs: Integer | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        type(item) is int or (type(item) is float and item.is_integer()) for item in value
    )


def _text_or_tokens(value: Any, what: str) -> Any:
    """Accept OpenAI's four input forms: str, [str], [int], [[int]]."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return value
        if _is_token_list(value) or all(_is_token_list(item) for item in value):
            return value
    if isinstance(value, list) and not value:
        raise ValueError(f"{what} must not be empty")
    raise ValueError(f"{what} must be a string, an array of strings, or an array of token arrays")


class CompletionRequest(_SamplingParams):
    prompt: Any
    suffix: str | None = None
    echo: bool | None = None
    best_of: Integer | None = Field(None, ge=0, le=20)
    logprobs: Integer | None = Field(None, ge=0, le=5)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        # The document lets the prompt be null (its default) or an empty array of strings.
        if value is None or value == []:
            return value
        return _text_or_tokens(value, "prompt")


class EmbeddingRequest(_Open):
    model: str
    input: Any
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Integer | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("model")
    @classmethod
    def _model_non_blank(cls, value: str) -> str:
        return _non_blank(value, "model")

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, value: Any) -> Any:
        return _text_or_tokens(value, "input")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body that must be one JSON object."""
    if not body.strip():
        raise GatewayError(400, "Request body is empty; expected a JSON object.", code="empty_body")
    try:
        data = safejson.loads(body)
    except UnicodeDecodeError:
        raise GatewayError(
            400, "Request body is not valid UTF-8.", code="invalid_encoding"
        ) from None
    except safejson.JsonTooDeep as exc:
        raise GatewayError(
            400,
            f"Request body nests arrays and objects deeper than {exc.max_depth} levels.",
            code="json_too_deep",
        ) from None
    except ValueError as exc:
        raise GatewayError(
            400,
            f"Request body is not valid JSON: {exc}.",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise GatewayError(
            400,
            f"Request body must be a JSON object, not {type(data).__name__}.",
            code="invalid_json",
        )
    return data


def _param_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def validation_error(exc: ValidationError) -> GatewayError:
    """Turn the first pydantic error into OpenAI's 400 wording and codes."""
    first = exc.errors(include_url=False)[0]
    param = _param_path(first["loc"]) or None
    kind = first["type"]
    message: str = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if kind == "missing":
        return GatewayError(
            400,
            f"Missing required parameter: '{param}'.",
            param=param,
            code="missing_required_parameter",
        )
    if kind.endswith("_type") or kind in {"model_type", "dict_type", "list_type"}:
        return GatewayError(
            400,
            f"Invalid type for '{param}': {message.lower()}, got {_describe(first['input'])}.",
            param=param,
            code="invalid_type",
        )
    where = f"Invalid value for '{param}'" if param else "Invalid request"
    return GatewayError(400, f"{where}: {message}.", param=param, code="invalid_value")


def validate_body(model: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
