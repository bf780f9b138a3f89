"""The streaming timeouts of ``UpstreamCall.chunks`` (first token, idle between chunks, total), kept
on one timer per stream: each fires when due and names the phase; time the consumer spends handing a
chunk on does not count as the replica being idle; any other cancellation passes through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from tunelab.gateway.errors import UpstreamTimeout
from tunelab.gateway.metrics import GatewayMetrics
from tunelab.gateway.proxy import StallTimer, UpstreamCall
from tunelab.gateway.routing import PhaseTimeouts, Route


class PacedAnswer:
    """Stands in for an upstream answer: one chunk after each of ``delays`` seconds."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.exhausted = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, delay in enumerate(self.delays):
            await asyncio.sleep(delay)
            yield f"chunk {i}".encode()
        self.exhausted = True

    def close(self) -> None:
        pass


def _call(delays: list[float], first_token: float, idle: float, total: float) -> UpstreamCall:
    route = Route(
        "m", "d", "m", ("u",), frozenset({"u"}), "READY", 0, PhaseTimeouts(1, first_token, idle, total)
    )
    call = UpstreamCall(None, GatewayMetrics(CollectorRegistry()), route, "/", b"", 1)  # type: ignore[arg-type]
    call.deadline = time.monotonic() + total
    call.response = PacedAnswer(delays)  # type: ignore[assignment]
    return call


async def _collect(call: UpstreamCall, consumer_pause: float = 0.0) -> list[bytes]:
    got = []
    async for chunk in call.chunks():
        got.append(chunk)
        await asyncio.sleep(consumer_pause)
    return got


def test_a_stream_within_its_timeouts_arrives_whole() -> None:
    call = _call([0.05, 0.02, 0.02, 0.02], first_token=0.2, idle=0.1, total=2)
    assert asyncio.run(_collect(call)) == [b"chunk 0", b"chunk 1", b"chunk 2", b"chunk 3"]


def test_first_token_timeout() -> None:
    call = _call([3.0, 0.01], first_token=0.1, idle=1, total=5)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=r"stopped sending for 0\.1s"):
        asyncio.run(_collect(call))
    assert time.monotonic() - started < 2.5  # well before the replica's first chunk


def test_idle_timeout_after_the_first_chunks() -> None:
    call = _call([0.01, 0.01, 3.0], first_token=2, idle=0.1, total=5)
    got: list[bytes] = []

    async def run() -> None:
        async for chunk in call.chunks():
            got.append(chunk)

    with pytest.raises(UpstreamTimeout, match=r"stopped sending for 0\.1s"):
        asyncio.run(run())
    assert got == [b"chunk 0", b"chunk 1"]


def test_total_timeout_while_chunks_keep_coming() -> None:
    call = _call([0.05] * 60, first_token=1, idle=0.5, total=0.3)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=r"no complete answer within 0\.3s"):
        asyncio.run(_collect(call))
    assert time.monotonic() - started < 2.5  # well before the answer's end (3 s)


def test_a_slow_consumer_is_not_an_idle_replica() -> None:
    # Each chunk comes at once, but the consumer takes 0.15 s (> idle) to hand each one on.
    call = _call([0.0, 0.0, 0.0], first_token=1, idle=0.1, total=5)
    assert asyncio.run(_collect(call, consumer_pause=0.15)) == [b"chunk 0", b"chunk 1", b"chunk 2"]


def test_another_cancellation_is_not_taken_for_a_timeout() -> None:
    call = _call([1.0], first_token=0.5, idle=0.5, total=5)

    async def run() -> None:
        task = asyncio.ensure_future(_collect(call))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())


def test_the_total_running_out_while_a_chunk_is_handed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # The consumer holds the first chunk past the total deadline: the next wait fails at once, and
    # the timer does not spin in the meantime.
    checks = []
    original = StallTimer._check

    def counted(self: StallTimer) -> None:
        checks.append(time.monotonic())
        original(self)

    monkeypatch.setattr(StallTimer, "_check", counted)
    call = _call([0.0, 0.0, 0.0], first_token=0.1, idle=0.1, total=0.2)
    with pytest.raises(UpstreamTimeout, match=r"no complete answer within 0\.2s"):
        asyncio.run(_collect(call, consumer_pause=0.5))
    assert len(checks) < 10, f"the timer ran {len(checks)} times in 0.5 s"
