"""KServe v2 health and metadata, /healthz and /metrics.

Readiness: the server is ready when every deployment has a healthy replica (no deployment:
ready); a model is ready when its deployment has one. Ready answers 200 with an empty body,
not ready 400 (KServe v2: "4xx = false"), an unknown model or version 404. Each model has
the one version the gateway serves (``Route.version``, "1").
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Path, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.responses import Response

from tunelab.common.errors import NotFound
from tunelab.gateway.api.openai.serving import caller_of, dumps
from tunelab.gateway.api.triton.protocol import TritonError
from tunelab.gateway.api.triton.serving import check_version
from tunelab.gateway.frontdoor import FrontDoor

router = APIRouter(tags=["KServe v2 and operations"])
Model = Path(description="A served model name")
Version = Path(pattern=r"^[0-9]+$")
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": TritonError} for code in (400, 401, 404)}


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


def _fd(request: Request) -> FrontDoor:
    return request.app.state.frontdoor  # type: ignore[no-any-return]


def _empty(ok: bool) -> Response:
    return Response(b"", 200 if ok else 400, media_type="text/plain")


@router.get("/healthz", summary="Process liveness")
async def healthz() -> Response:
    return Response(b"ok\n", media_type="text/plain")


@router.get("/metrics", summary="Prometheus metrics (requests, upstream errors, GPUs)")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(_fd(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v2/health/live", responses=ERRORS)
async def live() -> Response:
    return _empty(True)


@router.get("/v2/health/ready", responses=ERRORS)
async def ready(request: Request) -> Response:
    return _empty(all(_fd(request).router.table.ready.values()))


def _model_ready(request: Request, model: str, version: str | None) -> Response:
    route = _fd(request).router.table.get(model)
    if route is None:
        raise NotFound(f"model {model!r} is not deployed")
    check_version(route, version)
    return _empty(bool(route.healthy))


@router.get("/v2/models/{model}/ready", responses=ERRORS)
async def model_ready(request: Request, model: str = Model) -> Response:
    return _model_ready(request, model, None)


@router.get("/v2/models/{model}/versions/{version}/ready", responses=ERRORS)
async def model_version_ready(request: Request, model: str = Model, version: str = Version) -> Response:
    return _model_ready(request, model, version)


@router.get("/v2", response_model=ServerMetadata, responses=ERRORS)
async def server_metadata() -> Response:
    try:
        ours = version("tunelab-gateway")
    except PackageNotFoundError:
        ours = "0"
    return Response(
        dumps({"name": "tunelab", "version": ours, "extensions": ["generate"]}), media_type="application/json"
    )


def _metadata(request: Request, model: str, version: str | None) -> Response:
    route = _fd(request).route(model, caller_of(request))
    check_version(route, version)
    body = {
        "name": model,
        "versions": [route.version],
        "platform": "vllm",
        "inputs": [
            {"name": "text_input", "datatype": "BYTES", "shape": [1]},
            {"name": "stream", "datatype": "BOOL", "shape": [1]},
            {"name": "sampling_parameters", "datatype": "BYTES", "shape": [1]},
            {"name": "exclude_input_in_output", "datatype": "BOOL", "shape": [1]},
        ],
        "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
    }
    return Response(dumps(body), media_type="application/json")


@router.get("/v2/models/{model}", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata(request: Request, model: str = Model) -> Response:
    return _metadata(request, model, None)


@router.get("/v2/models/{model}/versions/{version}", response_model=ModelMetadata, responses=ERRORS)
async def model_version_metadata(request: Request, model: str = Model, version: str = Version) -> Response:
    return _metadata(request, model, version)
