"""The EnvironmentService gRPC servicer: proto in, domain call, proto out."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from tunelab.common.names import parse_name
from tunelab.environments import convert
from tunelab.environments.store import EnvironmentStore
from tunelab.environments.v1 import environments_pb2 as pb
from tunelab.environments.v1 import environments_pb2_grpc


def _id(name: str, field: str = "name") -> str:
    return parse_name(name, "environments", field)


class EnvironmentServicer(environments_pb2_grpc.EnvironmentServiceServicer):
    def __init__(self, store: EnvironmentStore) -> None:
        self.store = store

    def CreateEnvironment(
        self, request: pb.CreateEnvironmentRequest, context: grpc.ServicerContext
    ) -> pb.CreateEnvironmentResponse:
        env = request.environment
        spec = convert.spec_from_pb(env.spec)
        view = self.store.create(
            request.environment_id, spec, env.description, dict(env.labels), request.replace
        )
        return pb.CreateEnvironmentResponse(environment=convert.env_to_pb(view))

    def GetEnvironment(
        self, request: pb.GetEnvironmentRequest, context: grpc.ServicerContext
    ) -> pb.GetEnvironmentResponse:
        return pb.GetEnvironmentResponse(environment=convert.env_to_pb(self.store.get(_id(request.name))))

    def ListEnvironments(
        self, request: pb.ListEnvironmentsRequest, context: grpc.ServicerContext
    ) -> pb.ListEnvironmentsResponse:
        views, token = self.store.list_environments(request.page_token, request.page_size)
        return convert.list_to_pb(views, token)

    def DeleteEnvironment(
        self, request: pb.DeleteEnvironmentRequest, context: grpc.ServicerContext
    ) -> pb.DeleteEnvironmentResponse:
        self.store.delete(_id(request.name), request.force)
        return pb.DeleteEnvironmentResponse()

    def WatchEnvironment(
        self, request: pb.WatchEnvironmentRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchEnvironmentResponse]:
        name, after, exclude = _id(request.name), request.after_line, request.exclude_logs
        for view, lines in self.store.watch(name, after, exclude, context.is_active):
            yield pb.WatchEnvironmentResponse(
                environment=convert.env_to_pb(view), log_lines=[convert.log_to_pb(x) for x in lines]
            )

    def GetEnvironmentLogs(
        self, request: pb.GetEnvironmentLogsRequest, context: grpc.ServicerContext
    ) -> pb.GetEnvironmentLogsResponse:
        lines, token = self.store.logs(_id(request.name), request.page_token, request.page_size, request.tail)
        return pb.GetEnvironmentLogsResponse(
            lines=[convert.log_to_pb(x) for x in lines], next_page_token=token
        )

    def GetEnvironmentArtifact(
        self, request: pb.GetEnvironmentArtifactRequest, context: grpc.ServicerContext
    ) -> pb.GetEnvironmentArtifactResponse:
        build = self.store.artifact(_id(request.name), request.env_key)
        return pb.GetEnvironmentArtifactResponse(artifact=convert.artifact_to_pb(build))

    def ListEnvironmentFiles(
        self, request: pb.ListEnvironmentFilesRequest, context: grpc.ServicerContext
    ) -> pb.ListEnvironmentFilesResponse:
        env_id = _id(request.parent, "parent")
        files, token = self.store.files(env_id, request.env_key, request.page_token, request.page_size)
        return pb.ListEnvironmentFilesResponse(
            files=[convert.file_to_pb(f) for f in files], next_page_token=token
        )

    def ReadEnvironmentArchive(
        self, request: pb.ReadEnvironmentArchiveRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ReadEnvironmentArchiveResponse]:
        chunks = self.store.read(_id(request.name), request.env_key, request.layer_sha256, request.offset)
        for chunk in chunks:
            yield pb.ReadEnvironmentArchiveResponse(data=chunk)

    def AcquireEnvironmentLease(
        self, request: pb.AcquireEnvironmentLeaseRequest, context: grpc.ServicerContext
    ) -> pb.AcquireEnvironmentLeaseResponse:
        ttl = request.ttl.ToTimedelta().total_seconds() if request.HasField("ttl") else 0.0
        lease = self.store.acquire_lease(_id(request.parent, "parent"), request.holder, ttl)
        return pb.AcquireEnvironmentLeaseResponse(lease=convert.lease_to_pb(lease))

    def ReleaseEnvironmentLease(
        self, request: pb.ReleaseEnvironmentLeaseRequest, context: grpc.ServicerContext
    ) -> pb.ReleaseEnvironmentLeaseResponse:
        self.store.release_lease(request.name)
        return pb.ReleaseEnvironmentLeaseResponse()

    def ListEnvironmentLeases(
        self, request: pb.ListEnvironmentLeasesRequest, context: grpc.ServicerContext
    ) -> pb.ListEnvironmentLeasesResponse:
        leases, token = self.store.leases(
            _id(request.parent, "parent"), request.page_token, request.page_size
        )
        return pb.ListEnvironmentLeasesResponse(
            leases=[convert.lease_to_pb(x) for x in leases], next_page_token=token
        )

    def GarbageCollectEnvironments(
        self, request: pb.GarbageCollectEnvironmentsRequest, context: grpc.ServicerContext
    ) -> pb.GarbageCollectEnvironmentsResponse:
        min_idle = request.min_idle.ToTimedelta().total_seconds() if request.HasField("min_idle") else 0.0
        result = self.store.garbage_collect(request.max_total_bytes, min_idle, request.dry_run)
        return convert.gc_to_pb(result)
