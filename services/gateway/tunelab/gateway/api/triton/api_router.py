"""Routes: POST /v2/models/{model}[/versions/{version}]/generate and .../generate_stream."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from tunelab.gateway.api.openai.api_router import body_doc
from tunelab.gateway.api.triton.protocol import GenerateRequest, GenerateResponse, TritonError
from tunelab.gateway.api.triton.serving import TritonServing

router = APIRouter(tags=["Triton generate"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": TritonError} for code in (400, 401, 403, 404, 429, 503, 504)
}
STREAM: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}, "description": "data: {...} events, no [DONE]"}
}
Model = Path(description="A served model name (GET /v1/models lists them)")
Version = Path(pattern=r"^[0-9]+$", description="Triton model version; this gateway serves version 1")


def serving(request: Request) -> TritonServing:
    return request.app.state.triton  # type: ignore[no-any-return]


def _route(path: str, stream: bool, summary: str) -> Any:
    return router.post(
        path,
        response_model=None if stream else GenerateResponse,
        responses={**ERRORS, **(STREAM if stream else {})},
        openapi_extra=body_doc(GenerateRequest),
        summary=summary,
    )


@_route("/v2/models/{model}/generate", False, "Generate (one JSON answer)")
async def generate(request: Request, model: str = Model) -> Response:
    return await serving(request).generate(request, model, None, stream_route=False)


@_route("/v2/models/{model}/versions/{version}/generate", False, "Generate, one model version")
async def generate_version(request: Request, model: str = Model, version: str = Version) -> Response:
    return await serving(request).generate(request, model, version, stream_route=False)


@_route("/v2/models/{model}/generate_stream", True, "Generate as Server-Sent Events")
async def generate_stream(request: Request, model: str = Model) -> Response:
    return await serving(request).generate(request, model, None, stream_route=True)


@_route("/v2/models/{model}/versions/{version}/generate_stream", True, "Generate as SSE, one model version")
async def generate_stream_version(request: Request, model: str = Model, version: str = Version) -> Response:
    return await serving(request).generate(request, model, version, stream_route=True)
