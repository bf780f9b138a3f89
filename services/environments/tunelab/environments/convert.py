"""Conversions between protobuf messages and the environments domain values."""

from __future__ import annotations

from tunelab.common.protoconv import timestamp
from tunelab.common.storage.manifest import FileEntry
from tunelab.environments.catalog import BuildRecord, LeaseRecord
from tunelab.environments.gc import GcResult
from tunelab.environments.limits import MAX_LIST_PAGE_BYTES, clip
from tunelab.environments.pack import Layer
from tunelab.environments.registry import LogLine
from tunelab.environments.spec import Index, Spec
from tunelab.environments.store import EnvView, list_token
from tunelab.environments.v1 import environments_pb2 as pb

STATE = {
    name: getattr(pb.Environment.State, f"STATE_{name}")
    for name in ("PENDING", "RESOLVING", "INSTALLING", "PACKING", "READY", "FAILED")
}


def _index(msg: pb.PackageIndex) -> Index:
    return Index(msg.url.strip(), msg.username, msg.password)


def spec_from_pb(msg: pb.EnvironmentSpec) -> Spec:
    exclude_newer = ""
    if msg.HasField("exclude_newer"):
        at = msg.exclude_newer.ToDatetime()  # strftime's %Y drops the zeros of years before 1000
        exclude_newer = f"{at.year:04d}-{at:%m-%dT%H:%M:%S}Z"
    return Spec(
        python_version=msg.python_version.strip(),
        requirements=msg.requirements,
        exclude=tuple(n.strip() for n in msg.exclude if n.strip()),
        extra_indexes=tuple(_index(i) for i in msg.extra_indexes),
        default_index=_index(msg.default_index)
        if msg.HasField("default_index") and msg.default_index.url
        else None,
        include_system_site_packages=msg.include_system_site_packages,
        allow_unsafe_requirements=msg.allow_unsafe_requirements,
        constraints=msg.constraints,
        torch_backend=msg.torch_backend.strip(),
        exclude_newer=exclude_newer,
        platform=msg.platform.strip(),
    )


def spec_to_pb(data: dict[str, object]) -> pb.EnvironmentSpec:
    """The stored spec, passwords emptied (they are write-only)."""
    spec = Spec.from_dict(data).without_secrets()
    msg = pb.EnvironmentSpec(
        python_version=spec.python_version,
        requirements=spec.requirements,
        exclude=list(spec.exclude),
        extra_indexes=[pb.PackageIndex(url=i.url, username=i.username) for i in spec.extra_indexes],
        include_system_site_packages=spec.include_system_site_packages,
        allow_unsafe_requirements=spec.allow_unsafe_requirements,
        constraints=spec.constraints,
        torch_backend=spec.torch_backend,
        platform=spec.platform,
    )
    if spec.default_index:
        msg.default_index.CopyFrom(
            pb.PackageIndex(url=spec.default_index.url, username=spec.default_index.username)
        )
    if spec.exclude_newer:
        msg.exclude_newer.FromJsonString(spec.exclude_newer)
    return msg


def layer_to_pb(layer: Layer) -> pb.EnvironmentLayer:
    return pb.EnvironmentLayer(
        name=layer.name,
        sha256=layer.sha256,
        size_bytes=layer.size,
        unpacked_size_bytes=layer.unpacked,
        file_count=layer.files,
    )


def artifact_to_pb(build: BuildRecord) -> pb.EnvironmentArtifact:
    return pb.EnvironmentArtifact(
        env_key=build.env_key,
        size_bytes=build.size_bytes,
        python_path="bin/python",
        archive_format=pb.EnvironmentArtifact.ARCHIVE_FORMAT_TAR_ZSTD_LAYERS,
        manifest_sha256=build.manifest_sha256,
        file_count=len(build.layers),
        layers=[layer_to_pb(layer) for layer in build.layers],
    )


def env_to_pb(view: EnvView, with_lock: bool = True) -> pb.Environment:
    rec, build = view.record, view.build
    msg = pb.Environment(
        name=rec.name,
        description=rec.description,
        labels=rec.labels,
        spec=spec_to_pb(rec.spec),
        state=STATE[rec.state],
        phase=rec.phase,
        error=rec.error,
        env_key=rec.env_key,
        lock=rec.lock if with_lock else "",
        resolved_python_version=rec.resolved_python,
        resolved_platform=rec.resolved_platform,
        package_count=rec.package_count,
        size_bytes=build.size_bytes if build else 0,
        cache_hit=rec.cache_hit,
        active_lease_count=view.active_leases,
        create_time=timestamp(rec.create_time),
        ready_time=timestamp(rec.ready_time),
        last_used_time=timestamp(rec.last_used_time),
    )
    if build is not None:
        msg.artifact.CopyFrom(artifact_to_pb(build))
    return msg


def env_list_view_to_pb(view: EnvView) -> pb.Environment:
    """The list view: the bulky fields left out (requirements, constraints, lock, layers) and
    free text cut short; GetEnvironment returns them whole."""
    msg = env_to_pb(view, with_lock=False)
    msg.spec.ClearField("requirements")
    msg.spec.ClearField("constraints")
    if msg.HasField("artifact"):
        msg.artifact.ClearField("layers")
    msg.description = clip(msg.description)
    msg.error = clip(msg.error)
    return msg


def list_to_pb(
    views: list[EnvView], next_page_token: str, max_bytes: int = MAX_LIST_PAGE_BYTES
) -> pb.ListEnvironmentsResponse:
    """A page of list views that stops early, with a token after its last, past ``max_bytes``."""
    resp = pb.ListEnvironmentsResponse(next_page_token=next_page_token)
    used = 0
    for i, view in enumerate(views):
        msg = env_list_view_to_pb(view)
        used += msg.ByteSize()
        if i > 0 and used > max_bytes:
            resp.next_page_token = list_token(views[i - 1].record)
            break
        resp.environments.append(msg)
    return resp


def log_to_pb(line: LogLine) -> pb.BuildLogLine:
    return pb.BuildLogLine(
        line_number=line.number, time=timestamp(line.time), phase=line.phase, text=line.text
    )


def file_to_pb(entry: FileEntry) -> pb.EnvironmentFile:
    return pb.EnvironmentFile(path=entry.path, size=entry.size, sha256=entry.sha256, mode=entry.mode)


def lease_to_pb(lease: LeaseRecord) -> pb.EnvironmentLease:
    return pb.EnvironmentLease(
        name=lease.name,
        holder=lease.holder,
        env_key=lease.env_key,
        create_time=timestamp(lease.create_time),
        expire_time=timestamp(lease.expire_time),
    )


def gc_to_pb(result: GcResult) -> pb.GarbageCollectEnvironmentsResponse:
    return pb.GarbageCollectEnvironmentsResponse(
        deleted_environments=result.deleted,
        bytes_freed=result.bytes_freed,
        environments_kept=result.environments_kept,
        bytes_kept=result.bytes_kept,
    )
