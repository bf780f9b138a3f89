"""``build_app(model, batcher)``: the engine's OpenAI-compatible routes.

``/v1/completions`` and ``/v1/chat/completions`` (streaming as SSE ending with ``data: [DONE]``,
usage in the last chunk with ``stream_options.include_usage``), ``/v1/models``, ``/health``,
``/metrics``, and vLLM's runtime LoRA routes ``/v1/load_lora_adapter`` and
``/v1/unload_lora_adapter``. A client that disconnects cancels its generation at the next step.
Bodies over ``max_body_bytes`` are answered 413, and prompts that do not fit the model's context 400
(``limits``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from tunelab.engine.batcher import Batcher, Delta, Finish, GenRequest
from tunelab.engine.limits import DEFAULT_MAX_BODY_BYTES, BodyLimit, ContextTooLong, completion_budget
from tunelab.engine.model import ServedModel, UnknownModel
from tunelab.engine.protocol import (
    ChatRequest,
    CompletionRequest,
    LoadLoraRequest,
    UnloadLoraRequest,
    error_body,
)


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse(error_body(message, status), status_code=status)


def build_app(
    model: ServedModel,
    batcher: Batcher,
    default_max_tokens: int = 16,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """``default_max_tokens``: a completion's max_tokens when it has none (vLLM's 16); a chat without
    one may fill the rest of the context, as in vLLM."""
    app = FastAPI(title="tunelab engine")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    registry = CollectorRegistry()
    requests = Counter(
        "tunelab_engine_requests", "Generation requests.", ["model", "finish"], registry=registry
    )
    tokens = Counter("tunelab_engine_generation_tokens", "Generated tokens.", ["model"], registry=registry)
    running = Gauge(
        "tunelab_engine_requests_running", "Requests in the batch being generated.", registry=registry
    )
    waiting = Gauge("tunelab_engine_requests_waiting", "Requests waiting for a batch.", registry=registry)
    running.set_function(lambda: batcher.running)
    waiting.set_function(lambda: batcher.waiting)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return _error(msg, 400)

    @app.exception_handler(ContextTooLong)
    async def too_long(request: Request, exc: ContextTooLong) -> JSONResponse:
        return _error(str(exc), 400)

    @app.exception_handler(UnknownModel)
    async def unknown(request: Request, exc: UnknownModel) -> JSONResponse:
        return _error(f"The model `{exc.args[0]}` does not exist.", 404)

    def submit(
        req: CompletionRequest | ChatRequest, prompt: str | list[int], max_tokens: int | None
    ) -> GenRequest:
        ids = model.encode(prompt, req.add_special_tokens)  # a chat's prompt: ids already
        default = default_max_tokens if isinstance(req, CompletionRequest) else None
        gen = GenRequest(
            ids=ids,
            adapter=model.adapter_of(req.model),
            max_tokens=completion_budget(model.max_model_len, len(ids), max_tokens, default),
            sampling=req.sampling(),
            stop=req.stops(),
            loop=asyncio.get_running_loop(),
            want_logprobs=isinstance(req, CompletionRequest) and req.logprobs is not None,
        )
        batcher.submit(gen)
        return gen

    async def collect(request: Request, gen: GenRequest) -> tuple[str, Finish, list[float | None]]:
        text: list[str] = []
        logprobs: list[float | None] = []
        while True:
            get = asyncio.ensure_future(gen.out.get())
            gone = asyncio.ensure_future(_disconnected(request))
            done, _ = await asyncio.wait((get, gone), return_when=asyncio.FIRST_COMPLETED)
            gone.cancel()
            if get not in done:
                get.cancel()
                gen.cancelled = True
                raise asyncio.CancelledError
            item = get.result()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, Finish):
                requests.labels(req_model(gen), item.reason).inc()
                tokens.labels(req_model(gen)).inc(item.completion_tokens)
                return "".join(text), item, logprobs
            text.append(item.text)
            logprobs.append(item.logprob)

    def req_model(gen: GenRequest) -> str:
        return model.name if gen.adapter == "__base__" else gen.adapter

    async def stream(gen: GenRequest, chunk: Any, usage_wanted: bool) -> AsyncIterator[bytes]:
        try:
            while True:
                item = await gen.out.get()
                if isinstance(item, BaseException):
                    yield _sse({"error": error_body(str(item), 500)["error"]})
                    break
                if isinstance(item, Finish):
                    requests.labels(req_model(gen), item.reason).inc()
                    tokens.labels(req_model(gen)).inc(item.completion_tokens)
                    yield _sse(chunk(None, item.reason))
                    if usage_wanted:
                        yield _sse({**chunk(None, None), "choices": [], "usage": _usage(item)})
                    break
                yield _sse(chunk(item, None))
            yield b"data: [DONE]\n\n"
        finally:
            gen.cancelled = True  # no-op when finished; stops the row when the client left

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        gen = submit(req, req.prompt, req.max_tokens)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        echo = model.decode(gen.ids) if req.echo and not isinstance(req.prompt, str) else req.prompt
        if req.stream:

            def chunk(d: Delta | None, finish: str | None) -> dict[str, Any]:
                choice = {
                    "index": 0,
                    "text": d.text if d else "",
                    "logprobs": _lp(d),
                    "finish_reason": finish,
                }
                return {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": req.model,
                    "choices": [choice],
                }

            return _sse_response(stream(gen, chunk, req.include_usage))
        text, fin, lps = await collect(request, gen)
        if req.echo:
            text = f"{echo}{text}"
        logprobs = (
            {"token_logprobs": lps, "top_logprobs": [], "tokens": []} if req.logprobs is not None else None
        )
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": fin.reason}
        return JSONResponse(
            {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "choices": [choice],
                "usage": _usage(fin),
            }
        )

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request) -> Response:
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        prompt = model.encode_chat(messages, req.add_special_tokens)
        gen = submit(req, prompt, req.max_tokens or req.max_completion_tokens)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            first = [True]

            def chunk(d: Delta | None, finish: str | None) -> dict[str, Any]:
                delta: dict[str, Any] = {"content": d.text} if d else {}
                if first[0] and d:
                    delta, first[0] = {"role": "assistant", **delta}, False
                return {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": req.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }

            return _sse_response(stream(gen, chunk, req.include_usage))
        text, fin, _ = await collect(request, gen)
        message = {"role": "assistant", "content": text}
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": req.model,
                "choices": [{"index": 0, "message": message, "finish_reason": fin.reason}],
                "usage": _usage(fin),
            }
        )

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        cards = [
            {
                "id": name,
                "object": "model",
                "created": model.created,
                "owned_by": "tunelab",
                "root": model.path if name == model.name else model.adapters[name],
                "parent": None if name == model.name else model.name,
            }
            for name in model.names()
        ]
        return JSONResponse({"object": "list", "data": cards})

    @app.post("/v1/load_lora_adapter")
    async def load_lora(req: LoadLoraRequest) -> Response:
        if req.lora_name in model.adapters:
            return _error(f"The lora adapter '{req.lora_name}' has already been loaded.", 400)
        try:
            await asyncio.to_thread(model.load_adapter, req.lora_name, req.lora_path)
        except (OSError, ValueError) as exc:
            return _error(f"cannot load adapter {req.lora_name!r} from {req.lora_path}: {exc}", 400)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(req: UnloadLoraRequest) -> Response:
        await asyncio.to_thread(model.unload_adapter, req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _usage(f: Finish) -> dict[str, int]:
    return {
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    }


def _lp(d: Delta | None) -> dict[str, Any] | None:
    if d is None or d.logprob is None:
        return None
    return {"token_logprobs": [d.logprob], "top_logprobs": [], "tokens": [d.text]}


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})
