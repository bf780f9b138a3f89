"""Serving the OpenAI routes: route by ``model``, fill in ``max_tokens``, relay the replica's answer.

Bodies are relayed as the replica sent them; only ``model`` is rewritten when the replica knows
the model under another name (a deployment's default adapter, or vLLM's served name). Streams go
out event by event as they arrive. The gateway always asks the replica for usage in streams (for
its token metrics) and drops that last chunk again unless the client asked for it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tunelab.common.errors import NotFound, TunelabError
from tunelab.gateway.api.errors import error_body, status_of
from tunelab.gateway.api.openai.protocol import parse_request
from tunelab.gateway.api.streaming import CLIENT_CLOSED, SSEResponse, Tracker, until_disconnect
from tunelab.gateway.apikeys import ANONYMOUS, Caller
from tunelab.gateway.frontdoor import FrontDoor
from tunelab.gateway.proxy import UpstreamCall
from tunelab.gateway.routing import Route

DONE = b"data: [DONE]\n\n"
NO_USAGE = re.compile(rb'"usage":\s*null')


def caller_of(request: Request) -> Caller:
    return request.scope.get("state", {}).get("caller", ANONYMOUS)  # type: ignore[no-any-return]


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class OpenAIServing:
    def __init__(self, frontdoor: FrontDoor) -> None:
        self.fd = frontdoor

    async def generate(self, request: Request, chat: bool) -> Response:
        tracker = Tracker(self.fd.metrics, "openai_chat" if chat else "openai_completions")
        request.state.tracker = tracker
        body = parse_request(await request.body(), chat)
        route = self.fd.route(body["model"], caller_of(request))
        tracker.start(route.model)
        stream = bool(body.get("stream"))
        body["model"] = route.upstream_model
        if body.get("max_tokens") is None:
            limits = self.fd.limits
            body["max_tokens"] = body.get("max_completion_tokens") or (
                limits.default_chat_max_tokens if chat else limits.default_max_tokens
            )
        wants_usage = False
        if stream:
            options = body.get("stream_options") or {}
            wants_usage = bool(options.get("include_usage"))
            body["stream_options"] = {**options, "include_usage": True}
        path = "/v1/chat/completions" if chat else "/v1/completions"
        call = self.fd.call(route, path, dumps(body))
        if not stream:
            answer = await until_disconnect(request, self._complete(call, route, tracker))
            if answer is None:
                tracker.done(CLIENT_CLOSED)
                return Response(status_code=CLIENT_CLOSED)
            return answer
        await call.__aenter__()
        try:
            if await until_disconnect(request, call.send()) is None:
                tracker.done(CLIENT_CLOSED)
                return Response(status_code=CLIENT_CLOSED)
        except BaseException:
            await call.__aexit__(None, None, None)
            raise
        return SSEResponse(
            self._relay(call, route, tracker, wants_usage), call.close, tracker, call.exhausted
        )

    async def _complete(self, call: UpstreamCall, route: Route, tracker: Tracker) -> Response:
        async with call:
            await call.send()
            raw = await call.read()
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if isinstance(data, dict):
            tracker.tokens(data.get("usage"))
            if route.upstream_model != route.model and "model" in data:
                data["model"] = route.model
                raw = dumps(data)
        tracker.done(200)
        return Response(raw, media_type="application/json")

    async def _relay(
        self, call: UpstreamCall, route: Route, tracker: Tracker, wants_usage: bool
    ) -> AsyncIterator[bytes]:
        rename = None
        if route.upstream_model != route.model:
            rename = (b'"model":' + dumps(route.upstream_model), b'"model":' + dumps(route.model))
        buf = b""
        try:
            async for chunk in call.chunks():
                buf += chunk
                out = []  # every complete event of this read goes out in one write
                while (end := buf.find(b"\n\n")) >= 0:
                    event, buf = buf[: end + 2], buf[end + 2 :]
                    if event.startswith(DONE[:12]):
                        out.append(event)
                        continue
                    if b'"usage"' in event and not NO_USAGE.search(event):
                        data = json.loads(event[5:])
                        tracker.tokens(data.get("usage"))
                        if not data.get("choices") and not wants_usage:
                            continue
                    else:
                        tracker.chunk()
                    out.append(event.replace(*rename) if rename else event)
                if out:
                    yield b"".join(out)
        except TunelabError as exc:
            yield b"data: " + error_body("/v1/", exc.message, status_of(exc)) + b"\n\n" + DONE

    def models(self, caller: Caller) -> bytes:
        routes = self.fd.router.table.routes
        cards = [_card(name, route) for name, route in sorted(routes.items()) if _may_see(caller, name)]
        return dumps({"object": "list", "data": cards})

    def model(self, model_id: str, caller: Caller) -> bytes:
        """The card of one served model (a deployment's model name or an adapter's), as the list
        shows it; a model the caller's key may not call is as unknown as one not served."""
        route = self.fd.router.table.get(model_id)
        if route is None or not _may_see(caller, model_id):
            raise NotFound(f"The model `{model_id}` does not exist.")
        return dumps(_card(model_id, route))


def _may_see(caller: Caller | None, name: str) -> bool:
    return caller is None or not caller.models or name in caller.models


def _card(name: str, route: Route) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": route.created or int(time.time()),
        "owned_by": "tunelab",
        "root": route.upstream_model,
        "parent": route.parent or None,
    }
