"""The images' health check, ``python -m tunelab.common.grpc.healthcheck``, run as the container
runs it, against a real service process and a real server that is not serving yet."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import ServiceProcess, free_port
from tunelab.common.grpc.server import GrpcServer


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunelab.common.grpc.healthcheck", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


@pytest.fixture
def datasets_service(tmp_path: Path, service_process: type[ServiceProcess]) -> ServiceProcess:
    env = {"TUNELAB_DATA_DIR": str(tmp_path / "data"), "TUNELAB_AUTH_TOKEN": "s3cret"}
    return service_process("datasets", env, tmp_path / "datasets.log").start()


@pytest.fixture
def not_serving() -> Iterator[str]:
    """A gRPC server with health registered but never marked SERVING (a service still starting)."""
    server = GrpcServer("starting", "127.0.0.1:0", [])
    server._server.start()  # listening, without ``start()``'s SERVING
    yield server.address
    server._server.stop(0)


def test_serving_service_by_address_passes_without_a_token(datasets_service: ServiceProcess) -> None:
    result = healthcheck("--address", datasets_service.address)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{datasets_service.address}: SERVING"


def test_service_name_checks_the_port_in_tunelab_port(datasets_service: ServiceProcess) -> None:
    port = datasets_service.address.rsplit(":", 1)[1]
    result = healthcheck("datasets", env={"TUNELAB_PORT": port})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"127.0.0.1:{port}: SERVING"


def test_not_serving_fails(not_serving: str) -> None:
    result = healthcheck("--address", not_serving)
    assert result.returncode == 1
    assert result.stderr.strip() == f"{not_serving}: NOT_SERVING"


def test_nothing_listening_fails_with_the_reason() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = healthcheck("--address", address, "--timeout", "1")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{address}: UNAVAILABLE") or "DEADLINE_EXCEEDED" in result.stderr


def test_bad_arguments_are_refused_with_a_message() -> None:
    assert "unknown service 'nope'" in healthcheck("nope").stderr
    assert healthcheck().returncode == 2
    bad_port = healthcheck("gateway", env={"TUNELAB_PORT": "http"})
    assert bad_port.returncode == 2 and "TUNELAB_PORT='http' is not a port number" in bad_port.stderr
