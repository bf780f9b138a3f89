"""A fake vLLM (OpenAI-compatible) server for the gateway tests, run for real under uvicorn.

It records what it was sent, streams SSE like vLLM (``data: {...}\\n\\n`` … ``data: [DONE]``),
loads "adapters" through ``/v1/load_lora_adapter`` when allowed, and notices clients that go
away (the way vLLM aborts a request), so tests can see the gateway cancel upstream work.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

ANSWER = ["Hello", ",", " world", "!"]


@dataclass
class Behaviour:
    """What the fake does; tests change it between requests."""

    models: list[str] = field(default_factory=lambda: ["base-model"])
    runtime_lora: bool = True
    first_token_delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    stall_after_chunks: int = 0  # a stream sends this many chunks, then nothing more (0: all)
    reply_delay_s: float = 0.0
    fail_status: int = 0
    fail_message: str = "upstream says no"
    healthy: bool = True
    chat_message: dict[str, Any] | None = None  # a chat answer's message in place of the text (tool calls)


@dataclass
class Record:
    requests: list[dict[str, Any]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    loaded: dict[str, str] = field(default_factory=dict)
    control_peers: list[str] = field(default_factory=list)  # client host:port of each /health call


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def build_fake(b: Behaviour, rec: Record) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health(request: Request) -> Response:
        if request.client is not None:
            rec.control_peers.append(f"{request.client.host}:{request.client.port}")
        return Response(status_code=200 if b.healthy else 503)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake", "root": m} for m in b.models]
        return JSONResponse({"object": "list", "data": data})

    @app.post("/v1/load_lora_adapter")
    async def load(request: Request) -> Response:
        if not b.runtime_lora:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await request.json()
        rec.loaded[body["lora_name"]] = body["lora_path"]
        b.models.append(body["lora_name"])
        return PlainTextResponse(f"Success: LoRA adapter '{body['lora_name']}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload(request: Request) -> Response:
        name = (await request.json())["lora_name"]
        if name in b.models:
            b.models.remove(name)
        return PlainTextResponse("ok")

    async def generate(request: Request, chat: bool) -> Response:
        body = await request.json()
        body["_path"] = request.url.path
        body["_auth"] = request.headers.get("authorization", "")
        rec.requests.append(body)
        tag = str(body.get("prompt") or body.get("messages"))
        if b.fail_status:
            return JSONResponse(
                {
                    "error": {
                        "message": b.fail_message,
                        "type": "BadRequestError",
                        "param": None,
                        "code": b.fail_status,
                    }
                },
                status_code=b.fail_status,
            )
        if body["model"] not in b.models:
            return JSONResponse(
                {"error": {"message": f"The model `{body['model']}` does not exist.", "code": 404}},
                status_code=404,
            )
        n = min(int(body.get("max_tokens") or 16), len(ANSWER))
        kind = "chat.completion" if chat else "text_completion"
        usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}
        if body.get("stream"):
            return StreamingResponse(_stream(body, n, chat, usage, tag), media_type="text/event-stream")
        waiter = asyncio.ensure_future(asyncio.sleep(b.reply_delay_s))
        gone = asyncio.ensure_future(_client_gone(request))
        await asyncio.wait((waiter, gone), return_when=asyncio.FIRST_COMPLETED)
        if gone.done():
            waiter.cancel()
            rec.cancelled.append(tag)
            return Response(status_code=499)
        gone.cancel()
        rec.completed.append(tag)
        text = "".join(ANSWER[:n])
        choice: dict[str, Any] = {"index": 0, "finish_reason": "length" if n < len(ANSWER) else "stop"}
        if chat:
            choice["message"] = b.chat_message or {"role": "assistant", "content": text}
        else:
            choice["text"] = text
            if body.get("logprobs") is not None:
                choice["logprobs"] = {"token_logprobs": [-0.5] * n, "top_logprobs": [], "tokens": ANSWER[:n]}
        return JSONResponse(
            {
                "id": "cmpl-1",
                "object": kind,
                "created": 1,
                "model": body["model"],
                "choices": [choice],
                "usage": usage,
            }
        )

    async def _stream(body: dict[str, Any], n: int, chat: bool, usage: dict[str, int], tag: str):  # type: ignore[no-untyped-def]
        finished = False
        try:
            await asyncio.sleep(b.first_token_delay_s)
            for i in range(n):
                if i:
                    await asyncio.sleep(b.chunk_delay_s)
                if b.stall_after_chunks and i == b.stall_after_chunks:
                    await asyncio.sleep(3600)  # until the gateway goes away
                last = i == n - 1
                finish = ("length" if n < len(ANSWER) else "stop") if last else None
                if chat:
                    delta = {"role": "assistant", "content": ANSWER[i]} if i == 0 else {"content": ANSWER[i]}
                    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
                    kind = "chat.completion.chunk"
                else:
                    choice = {"index": 0, "text": ANSWER[i], "finish_reason": finish}
                    kind = "text_completion"
                chunk = {
                    "id": "cmpl-1",
                    "object": kind,
                    "created": 1,
                    "model": body["model"],
                    "choices": [choice],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                final = {
                    "id": "cmpl-1",
                    "object": "x",
                    "created": 1,
                    "model": body["model"],
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            (rec.completed if finished else rec.cancelled).append(tag)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await generate(request, chat=True)

    return app


class FakeServer:
    """The fake under uvicorn in a thread, on a free port."""

    def __init__(self, behaviour: Behaviour | None = None, port: int = 0) -> None:
        self.behaviour = behaviour or Behaviour()
        self.record = Record()
        config = uvicorn.Config(
            build_fake(self.behaviour, self.record),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> FakeServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "fake upstream did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
