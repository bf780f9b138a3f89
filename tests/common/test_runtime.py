"""The shared gRPC runtime: health, auth, the one error mapping, metrics, graceful stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from tunelab.common import errors
from tunelab.common.grpc.channel import open_channel
from tunelab.common.grpc.server import GrpcServer, Registration
from tunelab.datasets.v1 import datasets_pb2 as pb
from tunelab.datasets.v1 import datasets_pb2_grpc


class Boom(datasets_pb2_grpc.DatasetServiceServicer):
    def GetDataset(self, request, context):
        if request.name == "datasets/missing":
            raise errors.NotFound("dataset 'missing' does not exist")
        if request.name == "datasets/stream":
            return pb.GetDatasetResponse()
        raise RuntimeError("database password is hunter2")

    def WatchDatasetVersion(self, request, context):
        yield pb.WatchDatasetVersionResponse(version=pb.DatasetVersion(name="v"))
        raise errors.FailedPrecondition("stream broke on purpose")


@pytest.fixture
def server():
    name = pb.DESCRIPTOR.services_by_name["DatasetService"].full_name
    srv = GrpcServer(
        "test",
        "127.0.0.1:0",
        [Registration(name, datasets_pb2_grpc.add_DatasetServiceServicer_to_server, Boom())],
        auth_token="s3cret",
    )
    yield srv
    srv.stop(0)


def health(address: str, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(open_channel(address))
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_is_not_serving_until_started_and_needs_no_token(server) -> None:
    req = health_pb2.HealthCheckRequest(service="")
    assert server.health.Check(req, None).status == health_pb2.HealthCheckResponse.NOT_SERVING
    server.start()
    assert health(server.address) == health_pb2.HealthCheckResponse.SERVING
    assert (
        health(server.address, "tunelab.datasets.v1.DatasetService") == health_pb2.HealthCheckResponse.SERVING
    )
    server.stop(0)
    assert server.health.Check(req, None).status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_auth_and_error_mapping(server) -> None:
    server.start()
    anonymous = datasets_pb2_grpc.DatasetServiceStub(open_channel(server.address))
    with pytest.raises(grpc.RpcError) as err:
        anonymous.GetDataset(pb.GetDatasetRequest(name="datasets/missing"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    wrong = datasets_pb2_grpc.DatasetServiceStub(open_channel(server.address, "guess"))
    with pytest.raises(grpc.RpcError) as err:
        wrong.GetDataset(pb.GetDatasetRequest(name="datasets/missing"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    stub = datasets_pb2_grpc.DatasetServiceStub(open_channel(server.address, "s3cret"))
    with pytest.raises(grpc.RpcError) as err:
        stub.GetDataset(pb.GetDatasetRequest(name="datasets/missing"))
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "dataset 'missing' does not exist",
    )

    with pytest.raises(grpc.RpcError) as err:
        stub.GetDataset(pb.GetDatasetRequest(name="datasets/other"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in err.value.details() and "incident" in err.value.details()

    it = stub.WatchDatasetVersion(pb.WatchDatasetVersionRequest(name="v"))
    assert next(it).version.name == "v"
    with pytest.raises(grpc.RpcError) as err:
        next(it)
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "stream broke on purpose",
    )

    text = generate_latest(server.registry).decode()
    assert 'tunelab_grpc_requests_total{code="NOT_FOUND",method="GetDataset",service="test"} 1.0' in text
    assert (
        'tunelab_grpc_requests_total{code="UNAUTHENTICATED",method="GetDataset",service="test"} 2.0' in text
    )
    assert 'tunelab_grpc_requests_total{code="INTERNAL",method="GetDataset",service="test"} 1.0' in text
    assert (
        'tunelab_grpc_request_duration_seconds_count{method="WatchDatasetVersion",service="test"} 1.0' in text
    )


def test_service_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    from support import free_port, wait_serving

    port = free_port()
    env = {
        **os.environ,
        "TUNELAB_DATA_DIR": str(tmp_path),
        "TUNELAB_PORT": str(port),
        "TUNELAB_METRICS_PORT": "0",
    }
    log = tmp_path / "datasets.log"
    with log.open("wb") as out:  # a file, not a pipe nobody reads until the end: that can fill up
        proc = subprocess.Popen([sys.executable, "-m", "tunelab.datasets"], env=env, stdout=out, stderr=out)
    try:
        wait_serving(f"127.0.0.1:{port}", proc=proc)
        proc.send_signal(signal.SIGTERM)
        # A deadline for a hang, not a speed limit: on a loaded 2-core machine the stop itself took
        # 1.5-3 s, and a service that ignores the stop never exits at all.
        assert proc.wait(120) == 0
        out = log.read_text()
        assert '"message": "received SIGTERM, stopping"' in out and '"message": "datasets stopped"' in out
    finally:
        proc.kill()


def test_bad_settings_name_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "TUNELAB_DATA_DIR": str(tmp_path), "TUNELAB_PORT": "not-a-port"}
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.datasets"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "TUNELAB_PORT" in result.stderr
    env = {
        **os.environ,
        "TUNELAB_DATA_DIR": str(tmp_path),
        "TUNELAB_STORE_URL": "ftp://x",
        "TUNELAB_PORT": "0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.datasets"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "TUNELAB_STORE_URL" in result.stdout + result.stderr
