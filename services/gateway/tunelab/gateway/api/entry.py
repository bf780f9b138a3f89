"""The ASGI entry of the HTTP front door: API keys for every path, the body size limit
(``api.bodylimit``), then the generate routes straight to their handlers, everything else to the
FastAPI app.

Why the direct dispatch: the generate routes are the gateway's hot path, and FastAPI's own layers
(its middleware stack, route matching through included routers, the endpoint wrapper) cost more
per request than the whole proxying does. The routes stay declared in FastAPI, which documents
them (OpenAPI) and serves them the same way if called there; both call the same serving methods
and map errors through the same ``errors.error_response``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tunelab.common.errors import TunelabError
from tunelab.gateway.api.auth import authorize
from tunelab.gateway.api.bodylimit import DEFAULT_MAX_BODY_BYTES, bounded, check_declared
from tunelab.gateway.api.errors import answer_error, error_response
from tunelab.gateway.frontdoor import FrontDoor

GENERATE = re.compile(r"^/v2/models/([^/]+)(?:/versions/([0-9]+))?/(generate|generate_stream)$")
Handler = Callable[[Request], Awaitable[Response]]


class FrontDoorASGI:
    def __init__(
        self, app: FastAPI, frontdoor: FrontDoor, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ) -> None:
        self.app = app
        self.frontdoor = frontdoor
        self.max_body_bytes = max_body_bytes
        openai = app.state.openai
        self._openai: dict[str, Handler] = {
            "/v1/completions": lambda r: openai.generate(r, chat=False),
            "/v1/chat/completions": lambda r: openai.generate(r, chat=True),
        }
        self._triton = app.state.triton

    def _handler(self, path: str) -> Handler | None:
        handler = self._openai.get(path)
        if handler is not None:
            return handler
        m = GENERATE.match(path)
        if m is None:
            return None
        model, version, kind = m.groups()
        return lambda r: self._triton.generate(r, model, version, stream_route=kind == "generate_stream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            state["caller"] = authorize(scope, self.frontdoor)
            check_declared(scope, self.max_body_bytes)
        except TunelabError as exc:
            await error_response(scope["path"], exc)(scope, receive, send)
            return
        receive = bounded(receive, self.max_body_bytes)
        handler = self._handler(scope["path"]) if scope["method"] == "POST" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except Exception as exc:  # noqa: BLE001  (mapped like the app's exception handlers do)
            response = answer_error(request, exc)
        await response(scope, receive, send)
