"""The bearer token on every real service, each started as its own process with TUNELAB_AUTH_TOKEN
(the runtime's own test uses a stand-in servicer; this one proves each service installs it).

Each service gets one of its methods called without a token, with a wrong one, with the scheme in
lower case and in its usual spelling; health and reflection answer without a token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from support import ServiceProcess, service_stack
from tunelab.datasets.v1 import datasets_pb2, datasets_pb2_grpc
from tunelab.environments.v1 import environments_pb2, environments_pb2_grpc
from tunelab.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from tunelab.trainer.v1 import trainer_pb2, trainer_pb2_grpc

TOKEN = "s3cret-token-for-tests"

# One read-only method per service: (stub class, method name, request).
CALLS: dict[str, tuple[Callable[[grpc.Channel], Any], str, Any]] = {
    "datasets": (datasets_pb2_grpc.DatasetServiceStub, "ListDatasets", datasets_pb2.ListDatasetsRequest()),
    "environments": (
        environments_pb2_grpc.EnvironmentServiceStub,
        "ListEnvironments",
        environments_pb2.ListEnvironmentsRequest(),
    ),
    "trainer": (trainer_pb2_grpc.TrainerServiceStub, "ListJobs", trainer_pb2.ListJobsRequest()),
    "gateway": (gateway_pb2_grpc.GatewayServiceStub, "ListDeployments", gateway_pb2.ListDeploymentsRequest()),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    root = tmp_path_factory.mktemp("auth-stack")
    with service_stack(Path(root), {"TUNELAB_AUTH_TOKEN": TOKEN}) as services:
        yield services


def call(svc: ServiceProcess, authorization: str | None) -> grpc.StatusCode:
    make_stub, method, request = CALLS[svc.name]
    metadata = None if authorization is None else (("authorization", authorization),)
    with grpc.insecure_channel(svc.address) as channel:
        try:
            getattr(make_stub(channel), method)(request, metadata=metadata, timeout=60)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.mark.parametrize("service", list(CALLS))
def test_each_service_requires_the_bearer_token(stack: dict[str, ServiceProcess], service: str) -> None:
    svc = stack[service]
    assert call(svc, None) == grpc.StatusCode.UNAUTHENTICATED
    assert call(svc, "Bearer wrong-token") == grpc.StatusCode.UNAUTHENTICATED
    assert call(svc, TOKEN) == grpc.StatusCode.UNAUTHENTICATED  # the token without its scheme
    assert call(svc, f"Basic {TOKEN}") == grpc.StatusCode.UNAUTHENTICATED
    assert call(svc, f"bearer {TOKEN}") == grpc.StatusCode.OK  # the scheme in any case (RFC 6750)
    assert call(svc, f"Bearer {TOKEN}") == grpc.StatusCode.OK


@pytest.mark.parametrize("service", list(CALLS))
def test_health_and_reflection_need_no_token(stack: dict[str, ServiceProcess], service: str) -> None:
    svc = stack[service]
    with grpc.insecure_channel(svc.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=60)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        listed = next(iter(reflection.ServerReflectionInfo(iter([request]), timeout=60)))
        names = {s.name for s in listed.list_services_response.service}
        assert any(name.startswith(f"tunelab.{service}.v1.") for name in names), names
