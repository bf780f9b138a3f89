"""One request to a deployment's replicas: admission, least-busy replica, retries before the first
byte, and the four timeouts (connect, first token, idle between chunks, total).

``UpstreamCall`` is used as an async context manager; leaving it (normally, on error, or because
the client went away and the handler was cancelled) releases the admission slot and closes an
unfinished upstream answer, which closes its connection so the replica aborts the generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from types import TracebackType

from tunelab.gateway.errors import ModelNotReady, UpstreamError, UpstreamTimeout
from tunelab.gateway.metrics import GatewayMetrics
from tunelab.gateway.routing import Replica, Route, Router
from tunelab.gateway.upstream.http1 import Http1Response, UpstreamConnectionError

log = logging.getLogger(__name__)

# Statuses a replica answers before doing any work, so another replica may be tried.
RETRYABLE_STATUS = frozenset({502, 503})
JSON_HEADERS = (("content-type", "application/json"), ("accept", "*/*"))


class UpstreamCall:
    def __init__(
        self, router: Router, metrics: GatewayMetrics, route: Route, path: str, body: bytes, attempts: int
    ) -> None:
        self.router, self.metrics, self.route = router, metrics, route
        self.path, self.body, self.attempts = path, body, attempts
        self.t = route.timeouts
        self.deadline = 0.0
        self.response: Http1Response | None = None
        self._replica: Replica | None = None
        self._admitted = False

    async def __aenter__(self) -> UpstreamCall:
        self.router.admit(self.route)
        self._admitted = True
        self.deadline = time.monotonic() + self.t.total
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Releases the admission slot and the replica; closes an unfinished answer (idempotent)."""
        if self.response is not None:
            self.response.close()
        if self._replica is not None:
            self._replica.in_flight -= 1
            self._replica = None
        if self._admitted:
            self._admitted = False
            self.router.release(self.route)

    def exhausted(self) -> bool:
        """The whole answer has arrived and been handed on."""
        return self.response is not None and self.response.exhausted

    def _left(self, phase: float) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise UpstreamTimeout(f"model {self.route.model!r}: no complete answer within {self.t.total:g}s")
        return min(phase, left)

    async def send(self, first_byte_timeout: float | None = None) -> Http1Response:
        """Sends the request; returns the answer's head (status 2xx), retrying other replicas on
        connection failures and 502/503 while nothing has been received."""
        tried: set[str] = set()
        last: Exception | None = None
        for _ in range(self.attempts):
            replica = self._pick(tried)
            tried.add(replica.url)
            replica.in_flight += 1
            self._replica = replica
            key = self.route.key_of(replica.url)
            headers = (*JSON_HEADERS, ("authorization", f"Bearer {key}")) if key else JSON_HEADERS
            try:
                async with asyncio.timeout(self._left(first_byte_timeout or self.t.total)):
                    resp = await replica.pool.request(
                        "POST", self.path, self.body, headers, connect_timeout=self._left(self.t.connect)
                    )
            except TimeoutError:
                self._drop_replica()
                self.metrics.upstream_error(self.route.model, "timeout")
                raise UpstreamTimeout(
                    f"model {self.route.model!r}: replica {replica.url} sent nothing within "
                    f"{first_byte_timeout or self.t.total:g}s"
                ) from None
            except (UpstreamConnectionError, OSError) as exc:
                self._drop_replica()
                self.metrics.upstream_error(self.route.model, "connect")
                last = exc
                continue
            if resp.status < 300:
                self.response = resp
                return resp
            error = await self._error_of(resp)
            self._drop_replica()
            if resp.status in RETRYABLE_STATUS:
                last = error
                continue
            raise error
        if isinstance(last, UpstreamError):
            raise last
        raise ModelNotReady(
            f"model {self.route.model!r}: no replica could be reached ({last})", self.router.retry_after_s
        )

    def _pick(self, tried: set[str]) -> Replica:
        try:
            return self.router.pick(self.route, tried)
        except ModelNotReady:
            if not tried:
                raise
            return self.router.pick(self.route)

    def _drop_replica(self) -> None:
        if self._replica is not None:
            self._replica.in_flight -= 1
            self._replica = None

    async def _error_of(self, resp: Http1Response) -> UpstreamError:
        self.metrics.upstream_error(self.route.model, f"http_{resp.status // 100}xx")
        try:
            async with asyncio.timeout(self._left(self.t.idle)):
                raw = await resp.read()
        except (TimeoutError, UpstreamConnectionError):
            raw = b""
        finally:
            resp.close()
        return UpstreamError(
            upstream_message(raw) or f"upstream answered {resp.status}",
            resp.status,
            resp.headers.get("retry-after"),
        )

    async def read(self) -> bytes:
        """The whole answer body (bounded by the idle and total timeouts)."""
        return b"".join([chunk async for chunk in self.chunks(first_token=False)])

    async def chunks(self, first_token: bool = True) -> AsyncIterator[bytes]:
        """The answer body as it arrives: the first chunk within the first-token timeout (when
        ``first_token``), later ones within the idle timeout, all within the total."""
        assert self.response is not None
        it = aiter(self.response)
        timer = StallTimer(self.t.first_token if first_token else self.t.idle, self.deadline)
        try:
            while True:
                if timer.waiting():  # the total ran out while the last chunk was handed on
                    self.metrics.upstream_error(self.route.model, "timeout")
                    raise self._timeout(timer)
                try:
                    chunk = await anext(it)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if timer.expired():
                        self.metrics.upstream_error(self.route.model, "timeout")
                        raise self._timeout(timer) from None
                    raise
                except UpstreamConnectionError as exc:
                    self.metrics.upstream_error(self.route.model, "disconnect")
                    raise UpstreamError(f"model {self.route.model!r}: {exc}", 502) from None
                timer.received(self.t.idle)
                yield chunk
        finally:
            timer.stop()

    def _timeout(self, timer: StallTimer) -> UpstreamTimeout:
        model = self.route.model
        if timer.past_deadline:
            return UpstreamTimeout(f"model {model!r}: no complete answer within {self.t.total:g}s")
        return UpstreamTimeout(f"model {model!r}: the replica stopped sending for {timer.phase:g}s")


class StallTimer:
    """A stream's first-token, idle and total timeouts on one timer. Each chunk only notes that the
    wait for the next one began; the timer, when it fires before anything is due, re-arms for what
    is left. (``asyncio.timeout`` around every chunk schedules and cancels a timer per token, which
    was half of the gateway's CPU with 64 streams.) On expiry it cancels the waiting task, as
    ``asyncio.timeout`` does; ``expired()`` then tells that cancellation from any other."""

    __slots__ = ("_fired", "_handle", "_loop", "_task", "deadline", "past_deadline", "phase", "since")

    def __init__(self, phase: float, deadline: float) -> None:
        self.phase, self.deadline = phase, deadline  # deadline: time.monotonic() seconds
        self.since: float | None = None  # when the current wait began; None while not waiting
        self.past_deadline = False
        self._fired = False
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._handle = self._arm(time.monotonic())

    def _arm(self, now: float) -> asyncio.TimerHandle:
        left = self.deadline - now  # past the deadline: the next ``waiting()`` says so; no zero delays
        self._handle = self._loop.call_later(min(self.phase, left) if left > 0 else self.phase, self._check)
        return self._handle

    def waiting(self) -> bool:
        """A wait for the next chunk begins; True when the total deadline has passed already."""
        self.since = time.monotonic()
        self.past_deadline = self.since >= self.deadline
        return self.past_deadline

    def received(self, next_phase: float) -> None:
        """A chunk came; the next wait may last ``next_phase``. The timer is always due no later
        than the current wait's end; only a shorter phase (first token → idle) moves it."""
        self.since = None
        if next_phase != self.phase:
            self.phase = next_phase
            self._handle.cancel()
            self._arm(time.monotonic())

    def _check(self) -> None:
        now = time.monotonic()
        if self.since is None:  # the chunk is being handed on: time the next wait from its start
            self._arm(now)
            return
        due = min(self.since + self.phase, self.deadline)
        if now < due:
            self._handle = self._loop.call_later(due - now, self._check)
            return
        self._fired, self.past_deadline = True, now >= self.deadline
        if self._task is not None:
            self._task.cancel()

    def expired(self) -> bool:
        """Whether the CancelledError being handled is this timer's (then it is consumed)."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() == 0

    def stop(self) -> None:
        self._handle.cancel()


def upstream_message(raw: bytes) -> str:
    """The message of an error body in vLLM's, OpenAI's, Triton's or FastAPI's shape."""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:2000]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return err if isinstance(err, str) else json.dumps(err)
    return json.dumps(data)[:2000]
