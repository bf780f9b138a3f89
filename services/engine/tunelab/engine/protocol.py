"""Request bodies of the engine's OpenAI routes (vLLM's names and bounds), and the error body vLLM
answers with.

Unknown fields are ignored, as vLLM does, but never a field that asks for something only vLLM does
here: tools (``tools``, ``tool_choice``, ``functions``, ``function_call``) and structured output
(``response_format`` other than text, vLLM's ``guided_*`` and ``structured_outputs``). A request
with one is refused (``check``) with a 400 naming the field, rather than answered as if it had not
asked. ``tool_choice: "none"`` is accepted with tools: they are then not used, and the engine does
not use them either (the chat template is rendered without them).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelab.engine.sampling import Sampling

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs, and OpenAI's bound on top_logprobs
MAX_N = 128  # OpenAI's bound on n
# vLLM's structured-output fields: each constrains the answer to a shape the engine cannot enforce.
GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs")
PROMPT_SHAPES = "a string, a list of strings, a list of token ids or a list of lists of token ids"


class BadRequest(Exception):
    """A request the engine refuses: 400, with ``param`` naming the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def unsupported(field: str) -> BadRequest:
    return BadRequest(
        f"the embedded engine does not support '{field}'; deploy with the vLLM runtime, which does", field
    )


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=-1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=MAX_N, description="answers per prompt")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    # vLLM's extension: logprobs name tokens "token_id:N" (texts can collide; ids cannot).
    return_tokens_as_token_ids: bool = False
    response_format: dict[str, Any] | None = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    structured_outputs: Any = None

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        """A field sent as null takes its default, as in vLLM (whose fields are all optional)."""
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    def sampling(self, choice: int = 0) -> Sampling:
        """The sampling of answer ``choice`` to a prompt: with a seed, each answer its own (seed + i),
        so ``n`` seeded answers differ from each other and repeat from request to request."""
        seed = None if self.seed is None else self.seed + choice
        return Sampling(self.temperature, self.top_p, max(0, self.top_k), seed)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def check(self) -> None:
        """Refuses what the engine would otherwise have to ignore."""
        fmt = self.response_format
        if fmt is not None and fmt.get("type", "text") != "text":
            raise unsupported("response_format")
        for name in GUIDED:
            if getattr(self, name) not in (None, "", [], {}):
                raise unsupported(name)


class CompletionRequest(_Request):
    # Each prompt as given: a string, or token ids.
    prompt: list[str | list[int]] = Field(description=PROMPT_SHAPES)
    # vLLM's extension: the tokenizer's special tokens (BOS, ChatGLM3's [gMASK] sop) before the prompt.
    add_special_tokens: bool = True
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS, strict=True)
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, value: Any) -> list[str | list[int]]:
        """The prompts, one per answer group: a string or a list of token ids is one prompt."""
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value:
            if all(_is_token_id(v) for v in value):
                return [value]
            if all(isinstance(v, str) for v in value):
                return value
            if all(isinstance(v, list) and v and all(_is_token_id(t) for t in v) for v in value):
                return value
        raise ValueError(f"must be {PROMPT_SHAPES} (token ids: integers from 0), not empty")

    def check(self) -> None:
        super().check()
        if self.suffix:
            raise unsupported("suffix")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = ""

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # vLLM's extension; off by default: the chat template writes whatever prefix the model wants.
    add_special_tokens: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS, strict=True)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None

    def check(self) -> None:
        super().check()
        if self.top_logprobs and not self.logprobs:
            raise BadRequest("top_logprobs: needs logprobs: true", "top_logprobs")
        if self.tools and self.tool_choice != "none":
            raise unsupported("tools")
        if self.tool_choice is not None and self.tool_choice not in ("none", "auto"):
            raise unsupported("tool_choice")  # "required" or a named function: a tool call is demanded
        if self.functions and self.function_call != "none":
            raise unsupported("functions")
        if self.function_call is not None and self.function_call not in ("none", "auto"):
            raise unsupported("function_call")


class LoadLoraRequest(BaseModel):
    lora_name: str
    lora_path: str


class UnloadLoraRequest(BaseModel):
    lora_name: str


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    kinds = {
        400: "BadRequestError",
        413: "BadRequestError",
        404: "NotFoundError",
        503: "ServiceUnavailableError",
    }
    return {
        "error": {
            "message": message,
            "type": kinds.get(status, "InternalServerError"),
            "param": param,
            "code": status,
        }
    }
