"""The upstream client's sockets: Nagle off and each request in one write, so a request never waits
for the replica's delayed ACK (up to 40 ms on Linux) before its last bytes leave."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tunelab.gateway.upstream.http1 import Http1Pool

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class _Replica(asyncio.Protocol):
    """Answers every request once the whole of it (head and Content-Length body) has arrived, and
    records how many reads each request took."""

    reads: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.count = 0

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.count += 1
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        length = int(self.buf[:end].lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        if len(self.buf) < end + 4 + length:
            return
        self.buf = self.buf[end + 4 + length :]
        self.reads.append(self.count)
        self.count = 0
        self.transport.write(ANSWER)


class _Recorder:
    """The connection's transport, with every write recorded."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport, self._writes = transport, writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


async def _exchange(pool: Http1Pool, body: bytes) -> bytes:
    resp = await asyncio.wait_for(pool.request("POST", "/v1/completions", body), 10)
    return await resp.read()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_upstream_sockets_have_nodelay_and_one_write_per_request(loop_kind: str) -> None:
    _Replica.reads = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Replica, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = Http1Pool(f"http://127.0.0.1:{port}")
        writes: list[bytes] = []
        try:
            assert await _exchange(pool, b'{"model":"m","prompt":"hi"}') == b"{}"
            (conn,) = pool._idle
            assert conn.transport is not None
            sock = conn.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, "Nagle is on upstream"
            conn.transport = _Recorder(conn.transport, writes)  # type: ignore[assignment]
            body = b'{"model":"m","prompt":"' + b"x" * 3000 + b'"}'
            assert await _exchange(pool, body) == b"{}"
        finally:
            pool.close()
            server.close()
            await server.wait_closed()
        assert len(writes) == 1 and writes[0].endswith(body), "the request went out in several writes"

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        uvloop.run(main())
    else:
        asyncio.run(main())
    assert _Replica.reads, "the replica saw no request"
