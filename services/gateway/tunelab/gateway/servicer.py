"""The GatewayService gRPC servicer: proto in, domain call, proto out."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from tunelab.common.names import parse_name
from tunelab.gateway import convert
from tunelab.gateway.apikeys import ApiKeys
from tunelab.gateway.deployments import DeploymentManager
from tunelab.gateway.routing import Router
from tunelab.gateway.v1 import gateway_pb2 as pb
from tunelab.gateway.v1 import gateway_pb2_grpc


def _id(name: str) -> str:
    return parse_name(name, "deployments", "name")


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, deployments: DeploymentManager, keys: ApiKeys, router: Router) -> None:
        self.deployments = deployments
        self.keys = keys
        self.router = router

    def _pb(self, dep: object) -> pb.Deployment:
        return convert.deployment_to_pb(dep, self.router.in_flight)  # type: ignore[arg-type]

    def CreateDeployment(
        self, request: pb.CreateDeploymentRequest, context: grpc.ServicerContext
    ) -> pb.CreateDeploymentResponse:
        spec = convert.spec_from_pb(request.deployment_id, request.deployment)
        return pb.CreateDeploymentResponse(deployment=self._pb(self.deployments.create(spec)))

    def GetDeployment(
        self, request: pb.GetDeploymentRequest, context: grpc.ServicerContext
    ) -> pb.GetDeploymentResponse:
        return pb.GetDeploymentResponse(deployment=self._pb(self.deployments.get(_id(request.name))))

    def ListDeployments(
        self, request: pb.ListDeploymentsRequest, context: grpc.ServicerContext
    ) -> pb.ListDeploymentsResponse:
        items, token = self.deployments.list(request.page_token, request.page_size)
        return pb.ListDeploymentsResponse(deployments=[self._pb(d) for d in items], next_page_token=token)

    def UpdateDeployment(
        self, request: pb.UpdateDeploymentRequest, context: grpc.ServicerContext
    ) -> pb.UpdateDeploymentResponse:
        current = self.deployments.get(_id(request.deployment.name)).spec
        spec = convert.merge_update(current, request.deployment, list(request.update_mask.paths))
        return pb.UpdateDeploymentResponse(deployment=self._pb(self.deployments.update(spec)))

    def DeleteDeployment(
        self, request: pb.DeleteDeploymentRequest, context: grpc.ServicerContext
    ) -> pb.DeleteDeploymentResponse:
        self.deployments.delete(_id(request.name))
        return pb.DeleteDeploymentResponse()

    def WatchDeployment(
        self, request: pb.WatchDeploymentRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchDeploymentResponse]:
        for dep in self.deployments.watch(_id(request.name), active=context.is_active):
            yield pb.WatchDeploymentResponse(deployment=self._pb(dep))

    def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: grpc.ServicerContext
    ) -> pb.CreateApiKeyResponse:
        k = request.api_key
        expire = k.expire_time.ToNanoseconds() / 1e9 if k.HasField("expire_time") else None
        rec, secret = self.keys.create(request.api_key_id, k.display_name, tuple(k.models), expire)
        return pb.CreateApiKeyResponse(api_key=convert.api_key_to_pb(rec), secret=secret)

    def GetApiKey(self, request: pb.GetApiKeyRequest, context: grpc.ServicerContext) -> pb.GetApiKeyResponse:
        rec = self.keys.get(parse_name(request.name, "apiKeys", "name"))
        return pb.GetApiKeyResponse(api_key=convert.api_key_to_pb(rec))

    def ListApiKeys(
        self, request: pb.ListApiKeysRequest, context: grpc.ServicerContext
    ) -> pb.ListApiKeysResponse:
        return pb.ListApiKeysResponse(api_keys=[convert.api_key_to_pb(k) for k in self.keys.list()])

    def DeleteApiKey(
        self, request: pb.DeleteApiKeyRequest, context: grpc.ServicerContext
    ) -> pb.DeleteApiKeyResponse:
        self.keys.delete(parse_name(request.name, "apiKeys", "name"))
        return pb.DeleteApiKeyResponse()
