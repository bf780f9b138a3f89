"""Other services' resources a job names: datasets (mounts) and environments, reached over gRPC."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration

from tunelab.common.errors import FailedPrecondition, NotFound, Unavailable
from tunelab.common.names import parse_version
from tunelab.datasets.v1 import datasets_pb2 as dpb
from tunelab.datasets.v1 import datasets_pb2_grpc
from tunelab.environments.v1 import environments_pb2 as epb
from tunelab.environments.v1 import environments_pb2_grpc
from tunelab.trainer.v1 import trainer_pb2 as pb

T = TypeVar("T")
INPUT, OUTPUT = pb.DatasetMount.MODE_INPUT, pb.DatasetMount.MODE_OUTPUT


class References(Protocol):
    def resolve_mount(self, mount: pb.DatasetMount) -> pb.DatasetMount:
        """The mount with its mode and the version to start from; raises for a missing dataset."""
        ...

    def check_environment(self, name: str) -> None:
        """Raises NotFound for a missing environment, FailedPrecondition for a failed build."""
        ...

    def pin_environment(self, name: str, holder: str, ttl_s: float) -> tuple[str, str] | None:
        """(env_key, lease name) of the READY build, leased for ``holder``; None while it builds."""
        ...

    def release(self, lease: str) -> None: ...


def split_dataset(ref: str) -> tuple[str, str]:
    """``datasets/x`` → (x, ""); ``datasets/X/versions/3`` → (x, "3")."""
    ident, number = parse_version(ref, "datasets", "datasets")
    return ident, str(number) if number else ""


class GrpcReferences:
    def __init__(
        self,
        datasets: grpc.Channel,
        environments: grpc.Channel,
        datasets_addr: str = "",
        environments_addr: str = "",
    ) -> None:
        self._datasets = datasets_pb2_grpc.DatasetServiceStub(datasets)
        self._envs = environments_pb2_grpc.EnvironmentServiceStub(environments)
        self._where = {"datasets": datasets_addr, "environments": environments_addr}

    def _call(self, service: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(details) from None
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise FailedPrecondition(details) from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                where = self._where[service] or "its address"
                raise Unavailable(
                    f"the {service} service at {where} cannot be reached ({details}); is it running?"
                ) from None
            raise Unavailable(f"the {service} service answered {code.name}: {details}") from None

    def resolve_mount(self, mount: pb.DatasetMount) -> pb.DatasetMount:
        dataset_id, version = split_dataset(mount.dataset)
        ds = self._call(
            "datasets",
            lambda: self._datasets.GetDataset(
                dpb.GetDatasetRequest(name=f"datasets/{dataset_id}"), timeout=30
            ),
        ).dataset
        out = pb.DatasetMount()
        out.CopyFrom(mount)
        if out.mode == pb.DatasetMount.MODE_UNSPECIFIED:
            out.mode = OUTPUT if ds.source.WhichOneof("kind") == "empty" else INPUT
        if out.mode == OUTPUT:
            out.resolved_version = (
                f"datasets/{dataset_id}/versions/{version}" if version else ds.latest_version
            )
            return out
        name = f"datasets/{dataset_id}/versions/{version or 'latest'}"
        v = self._call(
            "datasets",
            lambda: self._datasets.GetDatasetVersion(dpb.GetDatasetVersionRequest(name=name), timeout=30),
        ).version
        if v.state != dpb.DatasetVersion.STATE_READY:
            state = dpb.DatasetVersion.State.Name(v.state).removeprefix("STATE_")
            raise FailedPrecondition(
                f"{v.name} is {state}, not READY: wait for it (`tunelab dataset watch "
                f"{dataset_id}@{v.name.rsplit('/', 1)[-1]}`) or name another version"
            )
        out.resolved_version = v.name
        return out

    def _environment(self, name: str) -> epb.Environment:
        req = epb.GetEnvironmentRequest(name=name)
        return self._call("environments", lambda: self._envs.GetEnvironment(req, timeout=30)).environment

    def check_environment(self, name: str) -> None:
        env = self._environment(name)
        if env.state == epb.Environment.STATE_FAILED:
            raise FailedPrecondition(
                f"{name} FAILED to build: {env.error.splitlines()[0] if env.error else ''}"
            )

    def pin_environment(self, name: str, holder: str, ttl_s: float) -> tuple[str, str] | None:
        env = self._environment(name)
        if env.state == epb.Environment.STATE_FAILED:
            raise FailedPrecondition(f"{name} FAILED to build")
        if env.state != epb.Environment.STATE_READY:
            return None
        ttl = Duration()
        ttl.FromNanoseconds(int(ttl_s * 1e9))
        req = epb.AcquireEnvironmentLeaseRequest(parent=name, holder=holder, ttl=ttl)
        lease = self._call("environments", lambda: self._envs.AcquireEnvironmentLease(req, timeout=30)).lease
        return lease.env_key or env.env_key, lease.name

    def release(self, lease: str) -> None:
        req = epb.ReleaseEnvironmentLeaseRequest(name=lease)
        self._call("environments", lambda: self._envs.ReleaseEnvironmentLease(req, timeout=30))
