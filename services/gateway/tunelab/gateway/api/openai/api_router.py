"""Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from tunelab.gateway.api.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from tunelab.gateway.api.openai.serving import OpenAIServing, caller_of

router = APIRouter(tags=["OpenAI"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 429, 503, 504)
}


def body_doc(model: type[Any]) -> dict[str, Any]:
    """Documents a JSON request body the handler reads itself (no validation pass by FastAPI)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def serving(request: Request) -> OpenAIServing:
    return request.app.state.openai  # type: ignore[no-any-return]


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    responses=ERRORS,
    openapi_extra=body_doc(CompletionRequest),
    summary="Text completion (SSE with stream: true)",
)
async def create_completion(request: Request) -> Response:
    return await serving(request).generate(request, chat=False)


@router.post(
    "/v1/chat/completions",
    response_model=CompletionResponse,
    responses=ERRORS,
    openapi_extra=body_doc(ChatCompletionRequest),
    summary="Chat completion with the model's chat template (SSE with stream: true)",
)
async def create_chat_completion(request: Request) -> Response:
    return await serving(request).generate(request, chat=True)


@router.get("/v1/models", response_model=ModelList, responses=ERRORS, summary="Served models")
async def list_models(request: Request) -> Response:
    return Response(serving(request).models(caller_of(request)), media_type="application/json")


@router.get(
    "/v1/models/{model_id:path}",
    response_model=ModelCard,
    responses=ERRORS,
    summary="One served model (an adapter is a model of its own)",
)
async def retrieve_model(model_id: str, request: Request) -> Response:
    return Response(serving(request).model(model_id, caller_of(request)), media_type="application/json")
