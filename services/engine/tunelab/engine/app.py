"""``build_app(model, batcher)``: the engine's OpenAI-compatible routes.

``/v1/completions`` and ``/v1/chat/completions`` (``serving``: streaming as SSE ending with
``data: [DONE]``, usage in the last chunk with ``stream_options.include_usage``), ``/v1/models``
and ``/v1/models/{id}``, ``/health``, ``/metrics``, and vLLM's runtime LoRA routes
``/v1/load_lora_adapter`` (directories under the adapter roots only) and ``/v1/unload_lora_adapter``.
With an API key, every route but ``/health`` requires it (``access``). A client that disconnects
cancels its generation at the next step. Bodies over ``max_body_bytes`` are answered 413, and
prompts that do not fit the model's context 400 (``limits``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from tunelab.engine.access import AdapterPathRefused, BearerAuth, confined_adapter_dir
from tunelab.engine.batcher import Batcher, Finish, GenRequest
from tunelab.engine.limits import DEFAULT_MAX_BODY_BYTES, BodyLimit, ContextTooLong
from tunelab.engine.model import BASE, ServedModel, UnknownModel
from tunelab.engine.protocol import (
    BadRequest,
    ChatRequest,
    CompletionRequest,
    LoadLoraRequest,
    UnloadLoraRequest,
    error_body,
)
from tunelab.engine.serving import OpenAIServing


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse(error_body(message, status), status_code=status)


def build_app(
    model: ServedModel,
    batcher: Batcher,
    default_max_tokens: int = 16,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    *,
    api_key: str = "",
    adapter_roots: Sequence[Path] = (),
) -> FastAPI:
    """``default_max_tokens``: a completion's max_tokens when it has none (vLLM's 16); a chat without
    one may fill the rest of the context, as in vLLM. ``api_key``: required on every route but
    ``/health`` (empty: none); ``adapter_roots``: where ``/v1/load_lora_adapter`` may read
    (``access``)."""
    app = FastAPI(title="tunelab engine")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)  # outermost: before any body is read
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
        fields = [".".join(str(p) for p in e["loc"][1:]) for e in exc.errors()]
        msg = "; ".join(
            f"{field}: {e['msg'].removeprefix('Value error, ')}"
            for field, e in zip(fields, exc.errors(), strict=True)
        )
        return JSONResponse(error_body(msg, 400, fields[0] if fields else None), status_code=400)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(exc.message, 400, exc.param), status_code=400)

    @app.exception_handler(ContextTooLong)
    async def too_long(request: Request, exc: ContextTooLong) -> JSONResponse:
        return _error(str(exc), 400)

    @app.exception_handler(UnknownModel)
    async def unknown(request: Request, exc: UnknownModel) -> JSONResponse:
        return _error(f"The model `{exc.args[0]}` does not exist.", 404)

    def finished(row: GenRequest, finish: Finish) -> None:
        name = model.name if row.adapter == BASE else row.adapter
        requests.labels(name, finish.reason).inc()
        tokens.labels(name).inc(finish.completion_tokens)

    serving = OpenAIServing(model, batcher, default_max_tokens, finished)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        return await serving.completion(req, request)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request) -> Response:
        return await serving.chat(req, request)

    def card(name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": model.created,
            "owned_by": "tunelab",
            "root": model.path if name == model.name else model.adapters[name],
            "parent": None if name == model.name else model.name,
        }

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [card(name) for name in model.names()]})

    @app.get("/v1/models/{model_id:path}")
    async def model_card(model_id: str) -> JSONResponse:
        if model_id not in model.names():
            raise UnknownModel(model_id)
        return JSONResponse(card(model_id))

    @app.post("/v1/load_lora_adapter")
    async def load_lora(req: LoadLoraRequest) -> Response:
        if req.lora_name in model.adapters:
            return _error(f"The lora adapter '{req.lora_name}' has already been loaded.", 400)
        try:
            path = str(confined_adapter_dir(req.lora_path, adapter_roots))
        except AdapterPathRefused as exc:
            return _error(str(exc), 400)
        try:
            await asyncio.to_thread(model.load_adapter, req.lora_name, path)
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
