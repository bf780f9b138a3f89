"""Conversions between the GatewayService protos and the gateway's domain values."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.duration_pb2 import Duration

from tunelab.common.errors import InvalidArgument
from tunelab.common.protoconv import timestamp
from tunelab.gateway.registry import ApiKeyRecord
from tunelab.gateway.specs import (
    Adapter,
    Deployment,
    DeploymentSpec,
    ModelSource,
    ReplicaStatus,
    Timeouts,
    UpstreamSpec,
)
from tunelab.gateway.v1 import gateway_pb2 as pb

# Fields of Deployment an UpdateDeployment mask may name.
WRITABLE = (
    "description",
    "labels",
    "model_name",
    "base_model",
    "adapters",
    "default_adapter",
    "upstream",
    "replicas",
    "max_in_flight",
    "timeouts",
)


RUNTIMES = {"vllm": pb.WorkloadUpstream.RUNTIME_VLLM, "engine": pb.WorkloadUpstream.RUNTIME_ENGINE}
RUNTIME_NAMES = {value: name for name, value in RUNTIMES.items()}


def source_from_pb(msg: pb.ModelSource) -> ModelSource:
    return ModelSource(msg.dataset_version, msg.path, msg.subpath)


def source_to_pb(src: ModelSource) -> pb.ModelSource:
    msg = pb.ModelSource(subpath=src.subpath, resolved_version=src.resolved_version)
    if src.dataset_version:
        msg.dataset_version = src.dataset_version
    elif src.path:
        msg.path = src.path
    return msg


def _seconds(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _duration(seconds: float) -> Duration | None:
    if not seconds:
        return None
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def upstream_from_pb(msg: pb.Upstream) -> UpstreamSpec:
    kind = msg.WhichOneof("kind")
    if kind == "vllm":
        v = msg.vllm
        return UpstreamSpec("vllm", tuple(v.base_urls), v.api_key, v.model_dir)
    if kind == "embedded":
        e = msg.embedded
        return UpstreamSpec(
            "embedded",
            device=e.device,
            dtype=e.dtype,
            max_batch_size=e.max_batch_size,
            trust_remote_code=e.trust_remote_code,
        )
    if kind == "workload":
        w = msg.workload
        return UpstreamSpec(
            "workload",
            trust_remote_code=w.trust_remote_code,
            runtime=RUNTIME_NAMES.get(w.runtime, ""),
            gpu_count=w.gpu_count,
            environment=w.environment,
            image=w.image,
            queue=w.queue,
            priority_class=w.priority_class,
            args=tuple(w.args),
            cpu_millis=w.cpu_millis,
            memory_bytes=w.memory_bytes,
        )
    raise InvalidArgument("deployment.upstream: set vllm (with base_urls), embedded or workload")


def upstream_to_pb(up: UpstreamSpec) -> pb.Upstream:
    """The upstream without its api_key (write-only)."""
    if up.kind == "vllm":
        return pb.Upstream(vllm=pb.VllmUpstream(base_urls=up.base_urls, model_dir=up.model_dir))
    if up.kind == "workload":
        return pb.Upstream(
            workload=pb.WorkloadUpstream(
                runtime=RUNTIMES.get(up.runtime, pb.WorkloadUpstream.RUNTIME_UNSPECIFIED),
                gpu_count=up.gpu_count,
                environment=up.environment,
                image=up.image,
                queue=up.queue,
                priority_class=up.priority_class,
                args=up.args,
                trust_remote_code=up.trust_remote_code,
                cpu_millis=up.cpu_millis,
                memory_bytes=up.memory_bytes,
            )
        )
    return pb.Upstream(
        embedded=pb.EmbeddedUpstream(
            device=up.device,
            dtype=up.dtype,
            max_batch_size=up.max_batch_size,
            trust_remote_code=up.trust_remote_code,
        )
    )


def spec_from_pb(
    deployment_id: str, d: pb.Deployment, current_upstream: UpstreamSpec | None = None
) -> DeploymentSpec:
    t = d.timeouts
    keep = current_upstream is not None and not d.HasField("upstream")
    return DeploymentSpec(
        id=deployment_id,
        model_name=d.model_name,
        base=source_from_pb(d.base_model),
        upstream=current_upstream if keep and current_upstream else upstream_from_pb(d.upstream),
        adapters=tuple(Adapter(a.name, source_from_pb(a.source)) for a in d.adapters),
        default_adapter=d.default_adapter,
        replicas=d.replicas,
        max_in_flight=d.max_in_flight,
        timeouts=Timeouts(_seconds(t.connect), _seconds(t.first_token), _seconds(t.idle), _seconds(t.total)),
        description=d.description,
        labels=dict(d.labels),
    )


def merge_update(current: DeploymentSpec, d: pb.Deployment, paths: list[str]) -> DeploymentSpec:
    """``current`` with the fields in ``paths`` (every writable one when empty) taken from ``d``."""
    unknown = sorted(set(paths) - set(WRITABLE))
    if unknown:
        raise InvalidArgument(
            f"update_mask: {', '.join(unknown)} cannot be changed; writable: {', '.join(WRITABLE)}"
        )
    new = spec_from_pb(current.id, d, current.upstream)
    if not paths:
        return new
    renamed = {"base_model": "base"}
    return current.with_changes(**{renamed.get(p, p): getattr(new, renamed.get(p, p)) for p in paths})


STATE = {
    name: getattr(pb.Deployment.State, f"STATE_{name}")
    for name in ("PENDING", "LOADING", "READY", "DEGRADED", "FAILED", "DELETING")
}


def replica_to_pb(r: ReplicaStatus, in_flight: int) -> pb.ReplicaStatus:
    return pb.ReplicaStatus(
        url=r.url,
        healthy=r.healthy,
        models=r.models,
        error=r.error,
        in_flight=in_flight,
        last_check_time=timestamp(r.last_check_time),
        job=r.job,
        restarts=r.restarts,
        restart_reason=r.restart_reason,
    )


def deployment_to_pb(dep: Deployment, in_flight: Callable[[str], int] = lambda _: 0) -> pb.Deployment:
    s, st = dep.spec, dep.status
    t = s.timeouts
    return pb.Deployment(
        name=s.name,
        description=s.description,
        labels=s.labels,
        model_name=s.model_name,
        base_model=source_to_pb(s.base),
        adapters=[pb.LoraAdapter(name=a.name, source=source_to_pb(a.source)) for a in s.adapters],
        default_adapter=s.default_adapter,
        upstream=upstream_to_pb(s.upstream),
        replicas=s.replicas,
        max_in_flight=s.max_in_flight,
        timeouts=pb.Timeouts(
            connect=_duration(t.connect),
            first_token=_duration(t.first_token),
            idle=_duration(t.idle),
            total=_duration(t.total),
        ),
        state=STATE[st.state],
        error=st.error,
        replica_statuses=[replica_to_pb(r, in_flight(r.url)) for r in st.replicas],
        served_model_names=s.served_names(),
        create_time=timestamp(st.create_time),
        update_time=timestamp(st.update_time),
        ready_time=timestamp(st.ready_time),
    )


def api_key_to_pb(rec: ApiKeyRecord) -> pb.ApiKey:
    return pb.ApiKey(
        name=rec.name,
        display_name=rec.display_name,
        secret_prefix=rec.secret_prefix,
        models=rec.models,
        state=pb.ApiKey.STATE_EXPIRED if rec.expired() else pb.ApiKey.STATE_ACTIVE,
        create_time=timestamp(rec.create_time),
        expire_time=timestamp(rec.expire_time),
        last_used_time=timestamp(rec.last_used_time),
    )
