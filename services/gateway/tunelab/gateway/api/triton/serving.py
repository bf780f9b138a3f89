"""Serving Triton generate over a replica's ``/v1/completions``.

``/generate`` answers one JSON object; a request with ``"stream": true`` there is refused with
Triton's own message. ``/generate_stream`` answers Server-Sent Events ``data: {...}\\n\\n`` with no
``[DONE]``: one event per upstream chunk (the new text) when ``stream`` is true, else a single
event with the whole output. Errors before the first event are JSON with an error status; after
it, an event ``data: {"error": "..."}`` (the status is already 200), as Triton does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tunelab.common.errors import InvalidArgument, NotFound, TunelabError
from tunelab.gateway.api.openai.serving import caller_of, dumps
from tunelab.gateway.api.streaming import CLIENT_CLOSED, SSE_HEADERS, SSEResponse, Tracker, until_disconnect
from tunelab.gateway.api.triton.protocol import Generate, completion_body, extra_outputs, parse_generate
from tunelab.gateway.frontdoor import FrontDoor
from tunelab.gateway.proxy import UpstreamCall
from tunelab.gateway.routing import Route

ONE_RESPONSE = (
    "generate expects model to produce exactly 1 response, use generate stream for model that "
    "generates various number of responses"
)


def check_version(route: Route, version: str | None) -> None:
    """Only the version the gateway serves exists; another is not found, as KServe v2 says."""
    if version is not None and version != route.version:
        raise NotFound(f"model {route.model!r} has no version {version!r}; it has version {route.version}")


class TritonServing:
    def __init__(self, frontdoor: FrontDoor) -> None:
        self.fd = frontdoor

    def _route(self, request: Request, model: str, version: str | None, g: Generate) -> Route:
        route = self.fd.route(model, caller_of(request))
        check_version(route, version)
        if not g.lora_name or g.lora_name == model:
            return route
        adapter = self.fd.route(g.lora_name, caller_of(request))
        if adapter.deployment != route.deployment:
            raise InvalidArgument(f"lora_name {g.lora_name!r} is not an adapter of model {model!r}")
        return adapter

    async def generate(
        self, request: Request, model: str, version: str | None, stream_route: bool
    ) -> Response:
        tracker = Tracker(self.fd.metrics, "triton_generate_stream" if stream_route else "triton_generate")
        request.state.tracker = tracker
        g = parse_generate(await request.body())
        route = self._route(request, model, version, g)
        tracker.start(model)
        if g.stream and not stream_route:
            raise InvalidArgument(ONE_RESPONSE)
        body = completion_body(g, route.upstream_model, self.fd.limits.default_max_tokens)
        call = self.fd.call(route, "/v1/completions", dumps(body))
        if not g.stream:
            result = await until_disconnect(request, self._complete(call, g, model))
            if result is None:
                tracker.done(CLIENT_CLOSED)
                return Response(status_code=CLIENT_CLOSED)
            answer, usage = result
            tracker.tokens(usage)
            tracker.done(200)
            if stream_route:
                return Response(b"data: " + dumps(answer) + b"\n\n", headers=dict(_sse_headers()))
            return Response(dumps(answer), media_type="application/json")
        await call.__aenter__()
        try:
            if await until_disconnect(request, call.send()) is None:
                tracker.done(CLIENT_CLOSED)
                return Response(status_code=CLIENT_CLOSED)
        except BaseException:
            await call.__aexit__(None, None, None)
            raise
        return SSEResponse(self._relay(call, g, model, tracker), call.close, tracker, call.exhausted)

    def _head(self, g: Generate, model: str) -> dict[str, Any]:
        head: dict[str, Any] = {"id": g.request_id} if g.request_id is not None else {}
        head.update(model_name=model, model_version="1")
        return head

    async def _complete(
        self, call: UpstreamCall, g: Generate, model: str
    ) -> tuple[dict[str, Any], dict[str, int] | None]:
        async with call:
            await call.send()
            data = json.loads(await call.read())
        choice = (data.get("choices") or [{}])[0]
        text = choice.get("text") or ""
        answer = self._head(g, model)
        answer["text_output"] = text if g.exclude_input else g.text + text
        answer.update(extra_outputs(g, choice, data.get("usage")))
        return answer, data.get("usage")

    async def _relay(
        self, call: UpstreamCall, g: Generate, model: str, tracker: Tracker
    ) -> AsyncIterator[bytes]:
        head = self._head(g, model)
        buf = b""
        finish: dict[str, Any] = {}
        token_logprobs: list[float] = []
        try:
            async for chunk in call.chunks():
                buf += chunk
                out = []  # every complete event of this read goes out in one write
                while (end := buf.find(b"\n\n")) >= 0:
                    event, buf = buf[5:end], buf[end + 2 :]
                    if event.strip() == b"[DONE]":
                        continue
                    data = json.loads(event)
                    usage = data.get("usage")
                    if usage:
                        tracker.tokens(usage)
                    if not data.get("choices"):
                        if usage and g.returns:
                            finish["logprobs"] = {"token_logprobs": token_logprobs}
                            extras = extra_outputs(g, finish, usage)
                            out.append(b"data: " + dumps({**head, "text_output": "", **extras}) + b"\n\n")
                        continue
                    choice = data["choices"][0]
                    token_logprobs += (choice.get("logprobs") or {}).get("token_logprobs") or []
                    if choice.get("finish_reason"):
                        finish["finish_reason"] = choice["finish_reason"]
                    tracker.chunk()
                    item = {**head, "text_output": choice.get("text") or ""}
                    if "return_finish_reason" in g.returns:
                        item["finish_reason"] = choice.get("finish_reason")
                    out.append(b"data: " + dumps(item) + b"\n\n")
                if out:
                    yield b"".join(out)
        except TunelabError as exc:
            yield b"data: " + dumps({"error": exc.message}) + b"\n\n"


def _sse_headers() -> list[tuple[str, str]]:
    return [(k.decode(), v.decode()) for k, v in SSE_HEADERS]
