"""Triton's generate request as its vLLM backend reads it, and its translation to a completion.

- ``text_input`` (required) is the raw prompt: it goes to ``/v1/completions`` as ``prompt``.
- ``sampling_parameters`` is a JSON-encoded string, as Triton requires; a JSON object is
  accepted too (an extension). Without it, the request parameters are the sampling parameters:
  the ``parameters`` object plus every top-level key Triton does not know, as Triton does.
- ``lora_name`` (inside the sampling parameters, as in the vLLM backend, or top-level) picks an
  adapter of the deployment.
- ``max_tokens`` is always sent: the vLLM backend's default is 16, like ``/v1/completions``'.
- ``exclude_input_in_output``: when not streaming the prompt is prepended to ``text_output``
  unless it is true; when streaming, false is an error (the backend refuses it) and the output
  is the new text only.
- ``return_finish_reason``, ``return_num_input_tokens``, ``return_num_output_tokens``,
  ``return_cumulative_logprob``, ``return_logprobs`` add those outputs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.common.errors import InvalidArgument
from tunelab.gateway.api import jsonbody

RETURN_FLAGS = (
    "return_finish_reason",
    "return_cumulative_logprob",
    "return_logprobs",
    "return_num_input_tokens",
    "return_num_output_tokens",
)
KNOWN = {
    "text_input",
    "stream",
    "sampling_parameters",
    "parameters",
    "exclude_input_in_output",
    "id",
    "lora_name",
    "image",
    *RETURN_FLAGS,
}
# Fields of the completion request the gateway sets itself.
RESERVED = {"model", "prompt", "stream", "stream_options", "echo", "lora_name"}


class GenerateRequest(BaseModel):
    """Documents the body (the handler reads it itself)."""

    model_config = ConfigDict(extra="allow")
    text_input: str
    stream: bool = False
    sampling_parameters: str | dict[str, Any] | None = Field(
        default=None, description='JSON string, e.g. "{\\"temperature\\": 0.7, \\"max_tokens\\": 1024}"'
    )
    parameters: dict[str, str | int | float | bool] | None = None
    exclude_input_in_output: bool | None = None
    return_finish_reason: bool = False
    return_cumulative_logprob: bool = False
    return_logprobs: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    lora_name: str | None = None
    id: str | None = None


class GenerateResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    model_name: str
    model_version: str
    text_output: str


class TritonError(BaseModel):
    error: str


@dataclass
class Generate:
    text: str
    stream: bool
    sampling: dict[str, Any]
    lora_name: str = ""
    exclude_input: bool | None = None
    returns: set[str] = field(default_factory=set)
    request_id: str | None = None


def _flag(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidArgument(f"{key}: expected a boolean")


def parse_generate(raw: bytes) -> Generate:
    try:
        body = jsonbody.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    text = body.get("text_input")
    if not isinstance(text, str):
        raise InvalidArgument("text_input: required, the prompt as a string")
    params = body.get("parameters") or {}
    if not isinstance(params, dict) or any(isinstance(v, dict | list) for v in params.values()):
        raise InvalidArgument("parameters: an object of string, number or boolean values")
    sampling = body.get("sampling_parameters")
    if isinstance(sampling, str):
        try:
            sampling = jsonbody.loads(sampling.encode()) if sampling.strip() else {}
        except ValueError as exc:
            raise InvalidArgument(f"sampling_parameters: not a JSON string ({exc})") from None
    if sampling is None:
        sampling = {**params, **{k: v for k, v in body.items() if k not in KNOWN}}
    if not isinstance(sampling, dict):
        raise InvalidArgument("sampling_parameters: a JSON object encoded as a string")
    sampling = {k: v for k, v in sampling.items() if v is not None}
    lora = sampling.pop("lora_name", None) or body.get("lora_name") or params.get("lora_name") or ""
    if not isinstance(lora, str):
        raise InvalidArgument("lora_name: expected a string")
    req_id = body.get("id")
    return Generate(
        text=text,
        stream=bool(_flag(body, "stream")),
        sampling=sampling,
        lora_name=lora,
        exclude_input=_flag(body, "exclude_input_in_output"),
        returns={k for k in RETURN_FLAGS if _flag(body, k)},
        request_id=str(req_id) if req_id is not None else None,
    )


def completion_body(g: Generate, upstream_model: str, default_max_tokens: int) -> dict[str, Any]:
    if g.stream and g.exclude_input is False:
        raise InvalidArgument("exclude_input_in_output=false is not supported when streaming")
    n = g.sampling.get("n", 1)
    if n != 1:
        raise InvalidArgument(f"sampling_parameters.n={n}: generate returns one text_output, use n=1")
    body = {k: v for k, v in g.sampling.items() if k not in RESERVED}
    body.update(model=upstream_model, prompt=g.text, stream=g.stream)
    if body.get("max_tokens") is None:
        body["max_tokens"] = default_max_tokens
    if g.returns & {"return_logprobs", "return_cumulative_logprob"} and not body.get("logprobs"):
        body["logprobs"] = 1
    if g.stream:
        body["stream_options"] = {"include_usage": True}
    return body


def extra_outputs(g: Generate, choice: dict[str, Any], usage: dict[str, Any] | None) -> dict[str, Any]:
    """The outputs the ``return_*`` flags ask for, from a completion choice and usage."""
    out: dict[str, Any] = {}
    if "return_finish_reason" in g.returns:
        out["finish_reason"] = choice.get("finish_reason")
    logprobs = (choice.get("logprobs") or {}).get("token_logprobs") or []
    if "return_cumulative_logprob" in g.returns:
        out["cumulative_logprob"] = math.fsum(x for x in logprobs if x is not None)
    if "return_logprobs" in g.returns:
        top = (choice.get("logprobs") or {}).get("top_logprobs") or []
        out["logprobs"] = json.dumps(top)
    if usage and "return_num_input_tokens" in g.returns:
        out["num_input_tokens"] = usage.get("prompt_tokens")
    if usage and "return_num_output_tokens" in g.returns:
        out["num_output_tokens"] = usage.get("completion_tokens")
    return out
