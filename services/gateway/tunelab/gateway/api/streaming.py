"""What every generate route shares: per-request metrics (:class:`Tracker`), an SSE response that
sends each event as it comes and stops the upstream when the client leaves, and
:func:`until_disconnect` for answers that are not streamed.

Starlette's StreamingResponse notices a client that left only when a write fails (ASGI 2.4), so
a request waiting for its first token would keep the replica busy; both helpers here listen for
``http.disconnect`` while they wait and cancel the upstream exchange at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tunelab.gateway.metrics import GatewayMetrics

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's code for "the client closed the request", for metrics only

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tells nginx in front of us not to buffer the stream
]


class Tracker:
    """Metrics of one request: counted once, in flight from ``start`` until ``done``.

    Generated tokens are the upstream's count (its usage, at the end of the answer). A stream the
    client left before that counts the chunks relayed to it instead, one token each, as vLLM and
    the engine stream them: the tokens it was sent are counted, not lost with the usage."""

    __slots__ = ("_gauge", "_last", "chunks", "counted", "metrics", "model", "route", "started", "streamed")

    def __init__(self, metrics: GatewayMetrics, route: str) -> None:
        self.metrics, self.route = metrics, route
        self.model = ""
        self.started = time.perf_counter()
        self._last = 0.0
        self._gauge: object | None = None
        self.streamed = False
        self.chunks = 0  # chunks with generated text relayed
        self.counted = False  # the upstream's usage was counted

    def start(self, model: str) -> None:
        self.model = model
        self._gauge = self.metrics.in_flight_gauge(model)
        self._gauge.inc()  # type: ignore[attr-defined]

    def chunk(self) -> None:
        """A chunk with generated text went out."""
        self.chunks += 1
        now = time.perf_counter()
        if self._last:
            self.metrics.inter_token(self.model, now - self._last)
        else:
            self.metrics.first_token(self.model, self.route, now - self.started)
        self._last = now

    def tokens(self, usage: dict[str, int] | None) -> None:
        if usage:
            self.counted = True
            self.metrics.tokens(self.model, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    def done(self, status: int) -> None:
        if self.route == "":
            return
        if status == CLIENT_CLOSED and not self.counted and self.chunks:
            self.metrics.tokens(self.model, 0, self.chunks)  # an abort: what was streamed so far
        self.metrics.request_done(self.model or "-", self.route, status, time.perf_counter() - self.started)
        if self._gauge is not None:
            self._gauge.dec()  # type: ignore[attr-defined]
        self.route = ""  # once


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class DisconnectWatch:
    """Cancels the current task when the client disconnects (one watcher task, no polling).

    ``async with DisconnectWatch(receive) as watch:`` — when the client leaves, the body is
    cancelled, the CancelledError is swallowed and ``watch.gone`` is True.
    """

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.gone = False
        self._over = False

    async def __aenter__(self) -> DisconnectWatch:
        self._task = asyncio.current_task()
        self._watcher = asyncio.ensure_future(_disconnected(self.receive))
        self._watcher.add_done_callback(self._on_disconnect)
        return self

    def _on_disconnect(self, watcher: asyncio.Future[None]) -> None:
        if not self._over and not watcher.cancelled() and self._task is not None:
            self.gone = True
            self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> bool:
        self._over = True
        self._watcher.cancel()
        if self.gone and self._task is not None:
            self._task.uncancel()
            return exc_type is asyncio.CancelledError
        return False


async def until_disconnect(request: Request, work: Awaitable[T]) -> T | None:
    """Awaits ``work``; returns None (``work`` cancelled) if the client disconnects first."""
    async with DisconnectWatch(request.receive):
        return await work
    return None


class SSEResponse(Response):
    """Streams ``events`` (already framed ``data: …\\n\\n`` bytes) with no buffering; on a client
    disconnect it stops iterating, and ``on_close`` runs whatever happened."""

    def __init__(
        self,
        events: AsyncIterator[bytes],
        on_close: Callable[[], None],
        tracker: Tracker,
        exhausted: Callable[[], bool] = lambda: False,
    ) -> None:
        self.events = events
        self.on_close = on_close
        self.tracker = tracker
        self.exhausted = exhausted  # true once the upstream answer is complete: the last write
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        status = 500
        try:
            async with DisconnectWatch(receive) as watch:
                await self._stream(send)
                status = 200
            if watch.gone:
                status = CLIENT_CLOSED
        except OSError:
            status = CLIENT_CLOSED
        finally:
            self.on_close()
            self.tracker.done(status)

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        try:
            async for event in self.events:
                if self.exhausted():  # the end of the stream goes in the same write
                    await send({"type": "http.response.body", "body": event, "more_body": False})
                    return
                await send({"type": "http.response.body", "body": event, "more_body": True})
        finally:
            await self.events.aclose()  # type: ignore[attr-defined]
        await send({"type": "http.response.body", "body": b"", "more_body": False})
