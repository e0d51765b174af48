"""What `slmkit serve` accepts: OpenAI's request bodies as pydantic models, and OpenAI's error body.

Every request is checked here before it reaches the model: a body that is not a JSON object, is not UTF-8, or
has a field of the wrong type, a missing `messages`/`prompt`, `max_tokens` ≤ 0 or `n` > 1 is refused with
400 and `{"error": {"message", "type": "invalid_request_error", "param", "code"}}`, as OpenAI does. Types are
strict (`"temperature": "hot"` or `"0.5"` is an error, `0` for a float is fine); fields this server does not
know are ignored, as llama.cpp's server does, so OpenAI clients that send more keep working. `response_format`
(json_object or json_schema) is taken on both routes and enforced by a grammar (vLLM takes it on completions too).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ApiError(Exception):
    """An answer that is an error: the HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class _Strict(BaseModel):
    # strict: no "0.5" -> 0.5 or true -> 1 coercions; unknown fields are ignored (OpenAI clients send many).
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None  # taken and not needed: the grammar always holds the answer to the schema
    description: str | None = None


class ResponseFormat(_Strict):
    """OpenAI's `response_format`: `text` (no constraint), `json_object` (any JSON object) or `json_schema`
    (JSON valid under its schema), enforced by a llama.cpp grammar while sampling."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object with a schema")
        return self


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")  # name, tool_calls, … reach the chat template as sent

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None

    def for_template(self) -> dict[str, Any]:
        """The message as llama-cpp-python's chat templates take it: content parts joined into one string."""
        msg = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            msg["content"] = "".join(p.text for p in self.content)
        return msg


class _Generation(_Strict):
    model: str | None = None
    max_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, gt=0)  # OpenAI's newer name for max_tokens
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def wants_logprobs(self) -> bool:
        return bool(self.logprobs) or self.top_logprobs is not None


class CompletionRequest(_Generation):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None


def parse(body: bytes, model: type[_Generation]) -> _Generation:
    """The request in `body`, or ApiError(400) naming what is wrong and where."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not valid UTF-8 (byte {exc.start})", code="invalid_encoding") \
            from None
    if not text.strip():
        raise ApiError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {_json_kind(data)}", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        param = _param(first["loc"])
        if first["type"] == "missing":
            raise ApiError(400, f"'{param}' is required", param=param, code="missing_required_parameter") \
                from None
        raise ApiError(400, f"{param}: {first['msg']}", param=param, code="invalid_type"
                       if first["type"].endswith("_type") else "invalid_value") from None


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


# pydantic names the member of a union it tried (`str`, `list[str]`, `TextPart`) in an error's location.
_FIELD = re.compile(r"^[a-z][a-z0-9_]*$")
_TYPE_TAGS = {"str", "int", "float", "bool", "none"}


def _param(loc: tuple) -> str:
    """('messages', 0, 'content') -> 'messages[0].content' (OpenAI's way of naming a nested parameter)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _FIELD.match(part) and part not in _TYPE_TAGS:
            out += f".{part}" if out else part
    return out or "body"
