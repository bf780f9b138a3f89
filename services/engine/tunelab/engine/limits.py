"""What one request may ask of the engine: a body no larger than ``max_body_bytes`` (``BodyLimit``),
and a prompt plus completion within the model's context (``completion_budget``), refused with
vLLM's messages.

The context is read from the model's config as vLLM reads it: the smallest of the length keys the
config has (``max_position_embeddings``, ChatGLM's ``seq_length``, GPT-2's ``n_positions``, ...).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunelab.engine.protocol import error_body

# Above the gateway's default limit (4 MiB): the gateway re-serializes what it passes on and adds
# fields (max_tokens, stream_options), so a body it accepts stays within the engine's.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# vLLM's keys (``_get_and_verify_max_len``), and its fallback where a config has none.
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
DEFAULT_CONTEXT = 2048


class ContextTooLong(ValueError):
    """The prompt, or the prompt with the completion asked for, does not fit the model's context."""


def context_length(config: Any) -> int:
    """The model's context in tokens: the smallest length its config gives."""
    found = [v for k in CONTEXT_KEYS if isinstance(v := getattr(config, k, None), int) and v > 0]
    return min(found, default=DEFAULT_CONTEXT)


def completion_budget(context: int, prompt_tokens: int, max_tokens: int | None, default: int | None) -> int:
    """The tokens a request may generate: ``max_tokens`` where the prompt and it fit the context,
    else ``ContextTooLong``; without ``max_tokens``, ``default`` (None: no default) bounded by the
    rest of the context."""
    if max_tokens is None:
        if prompt_tokens >= context:
            raise ContextTooLong(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_tokens} tokens in the messages, Please reduce the length of the messages."
            )
        rest = context - prompt_tokens
        return rest if default is None else min(default, rest)
    if prompt_tokens + max_tokens > context:
        raise ContextTooLong(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the "
            "completion). Please reduce the length of the messages or completion."
        )
    return max_tokens


class BodyLimit:
    """ASGI middleware: reads each request body up to ``max_bytes`` and answers 413 past it (before
    reading anything where Content-Length says so), then hands the app the body it read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before its body ended
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        first: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return first.pop() if first else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        message = f"The request body is larger than {self.max_bytes} bytes, the engine's --max-body-bytes."
        body = json.dumps(error_body(message, 413)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0
