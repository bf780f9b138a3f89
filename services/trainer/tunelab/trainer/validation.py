"""Checks and defaults for a submitted JobSpec: everything that can be refused before queueing."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.common.errors import InvalidArgument, Unimplemented
from tunelab.common.names import parse_name, parse_version, resource_name
from tunelab.trainer.records import DEFAULT_QUEUE
from tunelab.trainer.v1 import trainer_pb2 as pb

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_ENV = ("CUDA_VISIBLE_DEVICES", "TUNELAB_JOB", "TUNELAB_ATTEMPT")


@dataclass(frozen=True)
class Defaults:
    work_root: Path
    priority_classes: dict[str, int] = field(default_factory=dict)
    backoff_limit: int = 3


def priority_of(spec: pb.JobSpec, classes: dict[str, int]) -> tuple[str, int]:
    """(class, value): "high", "baize-high-priority" and "HIGH" are the same class."""
    name = spec.priority_class.strip().lower()
    if not name:
        return ("", spec.priority) if spec.priority else ("medium", classes.get("medium", 0))
    alias = name.removeprefix("baize-").removesuffix("-priority")
    for candidate in (name, alias):
        if candidate in classes:
            return candidate, classes[candidate]
    known = ", ".join(f"{k} ({v})" for k, v in sorted(classes.items(), key=lambda kv: -kv[1]))
    raise InvalidArgument(f"priority class {spec.priority_class!r} is unknown; use one of {known}")


def mount_path(working_dir: str, path: str) -> str:
    """The mount's absolute path: the working directory itself or a path inside it."""
    if not path:
        raise InvalidArgument("datasets: each mount needs a path, as in --datasets NAME:PATH")
    full = posixpath.normpath(posixpath.join(working_dir, path))
    root = posixpath.normpath(working_dir)
    if full != root and not full.startswith(root.rstrip("/") + "/"):
        raise InvalidArgument(
            f"dataset mount path {path!r} resolves to {full}, outside the working directory {root}: "
            "mounts must stay inside --working-dir (use a relative path such as data/train)"
        )
    return full


def mount_dataset(ref: str) -> str:
    """``AdvertiseGen``, ``datasets/AdvertiseGen/versions/2`` → ``datasets/advertisegen[/versions/2]``."""
    return resource_name("datasets", *parse_version(ref, "datasets", "datasets"))


def check_mounts(spec: pb.JobSpec) -> None:
    """Checks the mounts in place: each names its dataset as ``datasets/ID[/versions/N]``. Mounts
    nest as a pod's volumes do (one at the working directory itself, others inside it, even
    inside another mount); two at the same path are refused."""
    seen: dict[str, str] = {}
    for m in spec.datasets:
        if not m.dataset.strip() or m.dataset in ("datasets/",):
            raise InvalidArgument("datasets: each mount needs a dataset, as in --datasets NAME:PATH")
        m.dataset = mount_dataset(m.dataset)
        full = mount_path(spec.working_dir, m.path)
        if full in seen:
            raise InvalidArgument(
                f"dataset mounts {seen[full]} and {m.dataset} are both at {full}; give each its own path"
            )
        seen[full] = m.dataset


def check_workload(spec: pb.JobSpec) -> None:
    """Defaults and limits of the workload kind, in place. A server (WORKLOAD_SERVER) is one
    process listening on ``port``; it never succeeds: every exit, status 0 included, is restarted
    until ``backoff_limit`` restarts are used. So its restart policy is ALWAYS (ON_FAILURE means
    the same for it) and NEVER is refused: --backoff-limit 0 is how a server runs once."""
    if spec.workload == pb.WORKLOAD_UNSPECIFIED:
        spec.workload = pb.WORKLOAD_BATCH
    if spec.workload not in (pb.WORKLOAD_BATCH, pb.WORKLOAD_SERVER):
        raise InvalidArgument(f"workload {spec.workload} is unknown; use WORKLOAD_BATCH or WORKLOAD_SERVER")
    if spec.workload == pb.WORKLOAD_BATCH:
        if spec.port:
            raise InvalidArgument(
                f"port {spec.port} is for server workloads; add --server or leave out --port"
            )
        return
    if spec.workers > 1:
        raise InvalidArgument(
            f"workers: a server runs as one process, got {spec.workers}; submit one server job per replica"
        )
    if not 0 <= spec.port <= 65535:
        raise InvalidArgument(
            f"port {spec.port} is not a TCP port: give 1-65535, or 0 to let the executor pick one"
        )
    if spec.restart_policy == pb.RESTART_POLICY_NEVER:
        raise InvalidArgument(
            "restart policy never: a server is restarted whenever it exits, up to its backoff limit; "
            "use --backoff-limit 0 to run it once"
        )
    spec.restart_policy = pb.RESTART_POLICY_ALWAYS
    if "PORT" in spec.env_vars:
        raise InvalidArgument("PORT is set by the scheduler for a server; give the port with --port instead")


def normalize(job_id: str, spec: pb.JobSpec, defaults: Defaults) -> pb.JobSpec:
    """A copy of ``spec`` checked, with defaults filled in; raises for what cannot run."""
    out = pb.JobSpec()
    out.CopyFrom(spec)
    if out.type == pb.JOB_TYPE_UNSPECIFIED:
        out.type = pb.JOB_TYPE_PYTORCH
    if out.type not in pb.JobType.values():
        raise InvalidArgument(f"type {out.type} is unknown; tunelab runs PYTORCH jobs (-t PYTORCH)")
    if out.type != pb.JOB_TYPE_PYTORCH:
        kind = pb.JobType.Name(out.type).removeprefix("JOB_TYPE_")
        raise Unimplemented(f"job type {kind} is not supported yet; tunelab runs PYTORCH jobs (-t PYTORCH)")
    if not out.command or not out.command[0]:
        raise InvalidArgument("command: give the command to run after `--`, e.g. -- python train.py")
    out.priority_class, out.priority = priority_of(out, defaults.priority_classes)
    for what, res in (("resources", out.resources), ("requests", out.requests)):
        if res.cpu_millis < 0 or res.memory_bytes < 0 or res.gpu_count < 0:
            raise InvalidArgument(f"{what}: cpu, memory and nvidia.com/gpu must not be negative")
    if out.workers < 0:
        raise InvalidArgument(f"workers must be 1 or more, got {out.workers}")
    out.queue = f"queues/{parse_name(out.queue or DEFAULT_QUEUE, 'queues', 'queue')}"
    if out.working_dir and not posixpath.isabs(out.working_dir):
        raise InvalidArgument(f"working_dir {out.working_dir!r} must be an absolute path")
    out.working_dir = posixpath.normpath(out.working_dir or str(defaults.work_root / job_id))
    check_mounts(out)
    if out.environment:
        out.environment = f"environments/{parse_name(out.environment, 'environments', 'environment')}"
    if out.restart_policy == pb.RESTART_POLICY_UNSPECIFIED:
        out.restart_policy = pb.RESTART_POLICY_ON_FAILURE
    check_workload(out)
    if not out.HasField("backoff_limit"):
        out.backoff_limit = defaults.backoff_limit
    if out.backoff_limit < 0:
        raise InvalidArgument(f"backoff_limit must be 0 or more, got {out.backoff_limit}")
    for key in out.env_vars:
        if not ENV_NAME_RE.match(key):
            raise InvalidArgument(f"environment variable name {key!r} is not valid")
        if key in RESERVED_ENV:
            raise InvalidArgument(f"{key} is set by the scheduler; leave it out of the job's variables")
    for what, dur in (
        ("max_run_duration", out.max_run_duration),
        ("output_commit_interval", out.output_commit_interval),
        ("cancel_grace_period", out.cancel_grace_period),
    ):
        if dur.seconds < 0 or dur.nanos < 0:
            raise InvalidArgument(f"{what} must not be negative")
    return out
