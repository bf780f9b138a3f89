"""A fast fake OpenAI-compatible upstream for the gateway benchmark: one process, uvloop, a raw
asyncio protocol (no framework), keep-alive HTTP/1.1.

    python bench/gateway/fake_upstream.py --port 9000 [--chunks 8] [--slow-chunk-delay-ms 30]
    python bench/gateway/fake_upstream.py --port 9000 --chunks 128 --first-token-ms 70 --token-ms 30

Answers ``POST /v1/completions`` and ``/v1/chat/completions`` with a canned completion, or with
``--chunks`` SSE events (chunked transfer encoding, ``data: [DONE]`` last) when the body says
``"stream": true`` (all at once; paced by ``--slow-chunk-delay-ms`` when the prompt is "slow", to
see whether a proxy buffers); ``GET /health`` and ``GET /v1/models`` like vLLM. It never parses JSON, so what
it costs per request is the floor every proxy in the benchmark adds to. With ``--token-ms`` every
stream is paced like a generating engine: the first event after ``--first-token-ms``, then one
event every ``--token-ms`` (bench/gateway/burst.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

MODEL = "fake"

COMPLETION = json.dumps(
    {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "text": " world, this is a canned answer.", "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11},
    },
    separators=(",", ":"),
).encode()
MODELS = json.dumps(
    {
        "object": "list",
        "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench", "root": MODEL}],
    },
    separators=(",", ":"),
).encode()


def _event(i: int, last: bool) -> bytes:
    chunk = {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "text": f" tok{i}", "finish_reason": "length" if last else None}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _response(status: bytes, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: "
        + ctype
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"
)


class FakeUpstream(asyncio.Protocol):
    chunks = 8
    delay_s = 0.0
    first_token_s = 0.0
    token_s = 0.0  # > 0: every stream is paced

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at >= 0:
                length = int(
                    lower[at + 15 : lower.find(b"\r\n", at) if lower.find(b"\r\n", at) > 0 else None]
                )
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.handle(head, body)

    def handle(self, head: bytes, body: bytes) -> None:
        line = head.split(b"\r\n", 1)[0]
        method, path = line.split(b" ")[:2]
        if method == b"GET" and path == b"/health":
            self.transport.write(_response(b"200 OK", b""))
        elif method == b"GET" and path == b"/v1/models":
            self.transport.write(_response(b"200 OK", MODELS))
        elif method == b"POST" and path.startswith(b"/v1/"):
            compact = body.replace(b" ", b"")
            if b'"stream":true' in compact:
                if self.token_s:
                    self.pending = asyncio.ensure_future(self.stream_slowly(self.token_s, self.first_token_s))
                elif self.delay_s and b'"slow"' in compact:
                    self.pending = asyncio.ensure_future(self.stream_slowly(self.delay_s))
                else:
                    parts = [_chunk(_event(i, i == self.chunks - 1)) for i in range(self.chunks)]
                    self.transport.write(
                        STREAM_HEAD + b"".join(parts) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
                    )
            else:
                self.transport.write(_response(b"200 OK", COMPLETION))
        else:
            self.transport.write(_response(b"404 Not Found", b'{"error":"not found"}'))

    async def stream_slowly(self, delay_s: float, first_s: float = 0.0) -> None:
        self.transport.write(STREAM_HEAD)
        if first_s:
            await asyncio.sleep(first_s)
        for i in range(self.chunks):
            if self.transport.is_closing():
                return
            self.transport.write(_chunk(_event(i, i == self.chunks - 1)))
            await asyncio.sleep(delay_s)
        self.transport.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chunks", type=int, default=8, help="SSE events per streamed answer")
    parser.add_argument(
        "--slow-chunk-delay-ms", type=float, default=30.0, help='pause between events, prompt "slow"'
    )
    parser.add_argument(
        "--first-token-ms", type=float, default=0.0, help="with --token-ms: first event after"
    )
    parser.add_argument("--token-ms", type=float, default=0.0, help="pace every stream: one event per this")
    args = parser.parse_args()
    FakeUpstream.chunks = args.chunks
    FakeUpstream.delay_s = args.slow_chunk_delay_ms / 1000
    FakeUpstream.first_token_s = args.first_token_ms / 1000
    FakeUpstream.token_s = args.token_ms / 1000

    import uvloop

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(FakeUpstream, args.host, args.port, backlog=4096)
        print(f"fake upstream on http://{args.host}:{args.port} ({time.strftime('%H:%M:%S')})", flush=True)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
