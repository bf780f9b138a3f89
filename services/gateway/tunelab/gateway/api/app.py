"""``build_app(frontdoor)``: the FastAPI app of the HTTP front door. Handlers are built once onto
``app.state``; errors map to HTTP in ``api.errors``. Serve it through ``build_asgi``, which checks
API keys (``api.auth``) and takes the generate routes the short way (``api.entry``)."""

from __future__ import annotations

from fastapi import FastAPI

from tunelab.gateway.api import errors, ops
from tunelab.gateway.api.bodylimit import DEFAULT_MAX_BODY_BYTES
from tunelab.gateway.api.entry import FrontDoorASGI
from tunelab.gateway.api.openai.api_router import router as openai_router
from tunelab.gateway.api.openai.serving import OpenAIServing
from tunelab.gateway.api.triton.api_router import router as triton_router
from tunelab.gateway.api.triton.serving import TritonServing
from tunelab.gateway.frontdoor import FrontDoor


def build_app(frontdoor: FrontDoor) -> FastAPI:
    app = FastAPI(
        title="tunelab gateway",
        summary="Triton generate, OpenAI and KServe v2 over vLLM or tunelab's embedded engine.",
        version="1",
    )
    app.state.frontdoor = frontdoor
    app.state.openai = OpenAIServing(frontdoor)
    app.state.triton = TritonServing(frontdoor)
    app.include_router(triton_router)
    app.include_router(openai_router)
    app.include_router(ops.router)
    errors.install(app)
    return app


def build_asgi(frontdoor: FrontDoor, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FrontDoorASGI:
    """What the HTTP server runs: the app behind the API-key check, the body size limit and the
    generate fast path."""
    return FrontDoorASGI(build_app(frontdoor), frontdoor, max_body_bytes)
