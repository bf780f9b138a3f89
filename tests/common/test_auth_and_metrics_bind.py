"""The datasets service's real gRPC server: the bearer scheme in any case, /metrics on the gRPC host."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from support import free_port
from tunelab.common.grpc.channel import open_channel
from tunelab.common.grpc.server import GrpcServer
from tunelab.datasets.server import build_server
from tunelab.datasets.settings import DatasetSettings
from tunelab.datasets.v1 import datasets_pb2 as pb
from tunelab.datasets.v1 import datasets_pb2_grpc

TOKEN = "tl-secret-token"


def _start(tmp_path: Path, **settings: object) -> GrpcServer:
    server, _ = build_server(DatasetSettings(data_dir=tmp_path / "svc", port=0, **settings))  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture
def authed(tmp_path: Path) -> Iterator[datasets_pb2_grpc.DatasetServiceStub]:
    server = _start(tmp_path, metrics_port=0, auth_token=TOKEN)
    channel = open_channel(server.address)
    yield datasets_pb2_grpc.DatasetServiceStub(channel)
    channel.close()
    server.stop(1)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(authed: datasets_pb2_grpc.DatasetServiceStub, scheme: str) -> None:
    resp = authed.ListDatasets(pb.ListDatasetsRequest(), metadata=[("authorization", f"{scheme} {TOKEN}")])
    assert list(resp.datasets) == []


@pytest.mark.parametrize(
    "value", ["bearer tl-wrong", f"Basic {TOKEN}", TOKEN, f"bearer{TOKEN}", f"bearer {TOKEN}x", ""]
)
def test_wrong_token_or_scheme_is_refused(authed: datasets_pb2_grpc.DatasetServiceStub, value: str) -> None:
    metadata = [("authorization", value)] if value else []
    with pytest.raises(grpc.RpcError) as err:
        authed.ListDatasets(pb.ListDatasetsRequest(), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _listening_hosts(port: int) -> set[str]:
    """Local addresses of the sockets listening on ``port``, from /proc/net/tcp and tcp6."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            addr, hex_port = fields[1].split(":")
            if int(hex_port, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)
            # The kernel writes each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


def test_metrics_listen_on_the_grpc_host(tmp_path: Path) -> None:
    port = free_port()
    server = _start(tmp_path, host="127.0.0.1", metrics_port=port)
    try:
        assert server.metrics_address == ("127.0.0.1", port)
        if Path("/proc/net/tcp").exists():
            assert _listening_hosts(port) == {"127.0.0.1"}
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert s.makefile("rb").readline().split()[1] == b"200"
    finally:
        server.stop(1)
    assert _listening_hosts(port) == set()
