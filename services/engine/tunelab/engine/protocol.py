"""Request bodies of the engine's OpenAI routes (vLLM's names; unknown fields are ignored, as vLLM
does), and the error body vLLM answers with."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.engine.sampling import Sampling


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=0, ge=-1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, max(0, self.top_k), self.seed)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Request):
    prompt: str | list[int]
    # vLLM's extension: the tokenizer's special tokens (BOS, ChatGLM3's [gMASK] sop) before the prompt.
    add_special_tokens: bool = True
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0)


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


class LoadLoraRequest(BaseModel):
    lora_name: str
    lora_path: str


class UnloadLoraRequest(BaseModel):
    lora_name: str


def error_body(message: str, status: int) -> dict[str, Any]:
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
            "param": None,
            "code": status,
        }
    }
