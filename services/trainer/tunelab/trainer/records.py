"""The trainer's domain values: queues, jobs and attempts as stored, and the job states."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.trainer.v1 import trainer_pb2 as pb

QUEUED, STARTING, RUNNING = "QUEUED", "STARTING", "RUNNING"
SUCCEEDED, FAILED, CANCELLING, CANCELLED = "SUCCEEDED", "FAILED", "CANCELLING", "CANCELLED"
STATES = (QUEUED, STARTING, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED)
ACTIVE = (STARTING, RUNNING, CANCELLING)  # an attempt holds resources
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)

DEFAULT_QUEUE = "default"


@dataclass(frozen=True)
class QueueRecord:
    id: str
    create_time: float
    update_time: float
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    state: str = "OPEN"  # OPEN | PAUSED
    gpu_quota: int | None = None
    max_concurrent_jobs: int | None = None
    cpu_quota_millis: int | None = None
    memory_quota_bytes: int | None = None


@dataclass(frozen=True)
class AttemptRecord:
    job_id: str
    number: int
    state: str
    start_time: float
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    gpus: tuple[str, ...] = ()
    node: str = ""
    executor_ref: str = ""
    env_key: str = ""
    lease: str = ""
    env_vars: dict[str, str] = field(default_factory=dict)
    worker_count: int = 1
    end_time: float | None = None
    last_report_time: float | None = None
    endpoint: str = ""  # a server's base URL

    @property
    def holder(self) -> str:
        return f"jobs/{self.job_id}/attempts/{self.number}"


@dataclass(frozen=True)
class JobRecord:
    id: str
    spec: pb.JobSpec
    queue: str
    priority: int
    state: str
    create_time: float
    update_time: float
    phase: str = ""
    reason: str = ""
    message: str = ""
    attempt: int = 0
    exit_code: int | None = None
    failures: int = 0
    not_before: float | None = None
    cancel_reason: str = ""
    cancel_grace_s: float | None = None
    cancel_time: float | None = None
    latest_metrics: pb.MetricsPoint | None = None
    latest_eval: dict[str, float] = field(default_factory=dict)
    start_time: float | None = None
    end_time: float | None = None
    revision: int = 0
    owner: str = ""  # the replica running its current attempt (tunelab.common.ownership)
    owned_until: float | None = None
    attempts: tuple[AttemptRecord, ...] = ()

    @property
    def name(self) -> str:
        return f"jobs/{self.id}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def current(self) -> AttemptRecord | None:
        return self.attempts[-1] if self.attempts and self.attempts[-1].number == self.attempt else None


def workers(spec: pb.JobSpec) -> int:
    return max(1, spec.workers)


def is_server(spec: pb.JobSpec) -> bool:
    return spec.workload == pb.WORKLOAD_SERVER


def server_port(spec: pb.JobSpec) -> int | None:
    """The port a server workload asked for (0: the executor picks one); None for a batch job."""
    return spec.port if is_server(spec) else None


@dataclass(frozen=True)
class Demand:
    """What a job holds while it runs: every worker's resources together."""

    gpus: int = 0
    cpu_millis: int = 0
    memory_bytes: int = 0

    @staticmethod
    def of(spec: pb.JobSpec) -> Demand:
        n = workers(spec)
        req = spec.requests if spec.HasField("requests") else spec.resources
        return Demand(spec.resources.gpu_count * n, req.cpu_millis * n, req.memory_bytes * n)

    def __add__(self, other: Demand) -> Demand:
        return Demand(
            self.gpus + other.gpus,
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
        )
