"""OpenAI request and response shapes as the gateway reads them.

The gateway is a proxy: it checks only the fields it acts on (``model``, ``stream``,
``max_tokens``, and that there is a prompt or messages) and passes every other field to the
replica untouched, so vLLM's extra sampling parameters (``top_k``, ``repetition_penalty``, …)
work and the replica remains the one place that validates them. So do ``tools``, ``tool_choice``,
``response_format`` and ``logprobs``: vLLM implements them; the embedded engine answers logprobs
and refuses the others with a 400 naming the field, which the gateway passes on. The pydantic
models document the routes in the OpenAPI schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.common.errors import InvalidArgument
from tunelab.gateway.api import jsonbody


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CompletionRequest(_Open):
    model: str
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="One prompt (a string or token ids) or several; choice p * n + i answers prompt p."
    )
    max_tokens: int | None = Field(default=None, ge=1, description="Default: 16, as in vLLM and OpenAI.")
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: int | None = Field(
        default=None, ge=0, le=20, description="Alternatives per token (vLLM's default limit: 20)."
    )
    echo: bool | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = Field(default=None, description='{"include_usage": true}')


class ChatCompletionRequest(_Open):
    model: str
    messages: list[dict[str, Any]] = Field(description="[{'role': 'user', 'content': '…'}, …]")
    max_tokens: int | None = Field(default=None, ge=1, description="Default: the gateway's chat max_tokens.")
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="With logprobs: true.")
    tools: list[dict[str, Any]] | None = Field(default=None, description="vLLM runtime only.")
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = Field(
        default=None, description='{"type": "json_object"} or json_schema: vLLM runtime only.'
    )
    stream: bool | None = False
    stream_options: dict[str, Any] | None = Field(default=None, description='{"include_usage": true}')


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(_Open):
    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "tunelab"
    root: str
    parent: str | None = None


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo


def parse_request(raw: bytes, chat: bool) -> dict[str, Any]:
    """The request as a dict, after the checks the gateway needs."""
    try:
        body = jsonbody.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidArgument("model: required, the name of a served model (GET /v1/models lists them)")
    if chat and not isinstance(body.get("messages"), list):
        raise InvalidArgument("messages: required, a list of {role, content}")
    if not chat and not isinstance(body.get("prompt"), str | list):
        raise InvalidArgument("prompt: required, a string or a list")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidArgument("stream: must be true or false")
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidArgument(f"{field}: must be a positive integer")
    return body
