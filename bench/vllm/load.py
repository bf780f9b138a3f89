"""Streaming load on an OpenAI ``/v1/completions`` endpoint: ``concurrency`` workers, each on one
keep-alive connection, each sending ``per_worker`` streaming requests one after another.

The client is a few lines of asyncio HTTP/1.1 (chunked or length-framed bodies, SSE events split on
blank lines) so that it costs little CPU next to the servers it measures. Per request it records the
time to the first event that carries a choice (the first token), the arrival of every later one,
and the output tokens the server counted (``usage`` in the last event).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float = 0.0
    total_s: float = 0.0
    tokens: int = 0
    events: int = 0
    itl_s: float | None = None  # mean gap between token events after the first
    error: str = ""


@dataclass
class RoundResult:
    wall_s: float
    requests: list[RequestResult] = field(default_factory=list)
    cpu_s: float = 0.0  # this client's CPU time during the round: near wall_s, the client was the limit


class HttpError(Exception):
    pass


class Connection:
    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connects unless connected (a request times from after this, not from the TCP handshake)."""
        if self.reader is None or self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post_events(self, path: str, body: bytes, on_event: Callable[[bytes, float], None]) -> int:
        """POSTs ``body``; calls ``on_event(payload, arrival)`` for each SSE ``data:`` payload.
        Returns the HTTP status (for a status >= 400 the body is read and raised as HttpError)."""
        reader, writer = await self.open()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + body)
        status_line = await reader.readline()
        if not status_line:
            self.close()
            raise HttpError("connection closed before a status line")
        status = int(status_line.split()[1])
        headers: dict[bytes, bytes] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip().lower()
        buf = b""
        errors: list[bytes] = []

        def feed(data: bytes) -> None:
            nonlocal buf
            now = time.perf_counter()
            if status >= 400:
                errors.append(data)
                return
            buf += data
            while (end := buf.find(b"\n\n")) >= 0:
                event, buf = buf[:end], buf[end + 2 :]
                for line in event.split(b"\n"):
                    if line.startswith(b"data:"):
                        on_event(line[5:].strip(), now)

        if headers.get(b"transfer-encoding") == b"chunked":
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                feed(await reader.readexactly(size))
                await reader.readexactly(2)
        elif b"content-length" in headers:
            feed(await reader.readexactly(int(headers[b"content-length"])))
        else:
            while data := await reader.read(65536):
                feed(data)
            self.close()
        if headers.get(b"connection") == b"close":
            self.close()
        if status >= 400:
            raise HttpError(f"{status}: {b''.join(errors)[:300].decode(errors='replace')}")
        return status


async def stream_one(conn: Connection, body: dict[str, Any]) -> RequestResult:
    arrivals: list[float] = []
    usage: dict[str, Any] = {}

    def on_event(payload: bytes, now: float) -> None:
        if payload == b"[DONE]":
            return
        data = json.loads(payload)
        if data.get("choices"):
            arrivals.append(now)
        if data.get("usage"):
            usage.update(data["usage"])

    raw = json.dumps(body).encode()
    try:
        await conn.open()
        start = time.perf_counter()
        await conn.post_events("/v1/completions", raw, on_event)
    except (HttpError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
        conn.close()
        return RequestResult(False, error=f"{type(exc).__name__}: {exc}")
    end = time.perf_counter()
    if not arrivals:
        return RequestResult(False, total_s=end - start, error="no token event in the stream")
    itl = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) if len(arrivals) > 1 else None
    tokens = int(usage.get("completion_tokens") or len(arrivals))
    return RequestResult(True, arrivals[0] - start, end - start, tokens, len(arrivals), itl)


async def run_round(
    base_url: str, bodies: list[dict[str, Any]], concurrency: int, per_worker: int, stagger_s: float = 0.0
) -> RoundResult:
    """``concurrency`` workers, worker w sending ``bodies[(w * per_worker + j) % len(bodies)]``.

    All workers start at once (requests of equal length then stay in lockstep, as with
    ``vllm bench serve --max-concurrency``), or, with ``stagger_s``, worker w after
    ``stagger_s * w / concurrency`` seconds, which spreads arrivals like independent clients."""
    rounds = await run_shared_round({"": (base_url, bodies)}, concurrency, per_worker, stagger_s)
    return rounds[""]


async def run_shared_round(
    sides: dict[str, tuple[str, list[dict[str, Any]]]],
    concurrency: int,
    per_worker: int,
    stagger_s: float = 0.0,
) -> dict[str, RoundResult]:
    """A round over every side at once: ``concurrency`` workers, each alternating between the sides
    request by request (worker w's j-th request to side ``(w + j) % len(sides)``, body
    ``(w * per_worker + j) % len(bodies)``), so with two sides half the streams go each way at any
    moment and both sides' requests meet the same engine steps. ``sides``: name → (base URL, bodies).
    Each side's result carries the round's wall time and an equal share of the client's CPU time."""
    names = list(sides)
    conns = {name: [Connection(sides[name][0]) for _ in range(concurrency)] for name in names}
    results: dict[str, list[RequestResult]] = {name: [] for name in names}

    async def worker(w: int) -> None:
        if stagger_s > 0:
            await asyncio.sleep(stagger_s * w / concurrency)
        for j in range(per_worker):
            name = names[(w + j) % len(names)]
            bodies = sides[name][1]
            results[name].append(await stream_one(conns[name][w], bodies[(w * per_worker + j) % len(bodies)]))

    start, cpu = time.perf_counter(), time.process_time()
    try:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    finally:
        for side in conns.values():
            for c in side:
                c.close()
    wall, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return {name: RoundResult(wall, results[name], cpu_s / len(names)) for name in names}


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(rounds: list[RoundResult]) -> dict[str, Any]:
    """Throughput over all rounds (output tokens / wall seconds) and per-request latency percentiles."""
    reqs = [r for rnd in rounds for r in rnd.requests]
    ok = [r for r in reqs if r.ok]
    wall = sum(rnd.wall_s for rnd in rounds)
    tokens = sum(r.tokens for r in ok)

    def ms(values: list[float], q: float) -> float | None:
        v = percentile(values, q)
        return None if v is None else round(v * 1000, 3)

    ttft = [r.ttft_s for r in ok]
    itl = [r.itl_s for r in ok if r.itl_s is not None]
    return {
        "requests": len(reqs),
        "errors": len(reqs) - len(ok),
        "first_error": next((r.error for r in reqs if not r.ok), ""),
        "output_tokens": tokens,
        "wall_s": round(wall, 3),
        "output_tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "ttft_ms_p50": ms(ttft, 50),
        "ttft_ms_mean": round(sum(ttft) / len(ttft) * 1000, 3) if ttft else None,
        "ttft_ms_p99": ms(ttft, 99),
        "itl_ms_p50": ms(itl, 50),
        "e2e_ms_p50": ms([r.total_s for r in ok], 50),
        "rounds_tokens_per_s": [
            round(sum(r.tokens for r in rnd.requests if r.ok) / rnd.wall_s, 1) for rnd in rounds
        ],
        "rounds_ttft_ms_p50": [ms([r.ttft_s for r in rnd.requests if r.ok], 50) for rnd in rounds],
        "client_cpu_share": round(sum(rnd.cpu_s for rnd in rounds) / wall, 3) if wall > 0 else None,
    }
