"""Settings of the trainer service (``TUNELAB_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tunelab.common.settings import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, ServiceSettings

# Kueue WorkloadPriorityClass values of the seed's baize-{high,medium,low}-priority classes.
DEFAULT_PRIORITY_CLASSES = {"high": 100000, "medium": 10000, "low": 1000}


class TrainerSettings(ServiceSettings):
    port: int = Field(default=DEFAULT_PORTS["trainer"], description="gRPC port (TUNELAB_PORT).")
    metrics_port: int = Field(default=DEFAULT_METRICS_PORTS["trainer"], description="0 disables /metrics.")
    datasets_addr: str = Field(
        default=f"localhost:{DEFAULT_PORTS['datasets']}", description="host:port of the datasets service."
    )
    environments_addr: str = Field(
        default=f"localhost:{DEFAULT_PORTS['environments']}",
        description="host:port of the environments service.",
    )
    gpus: int | None = Field(
        default=None,
        ge=0,
        description="GPUs the local executor schedules. Unset: those NVML finds (none without a driver). "
        "A number overrides NVML: fewer reserves the rest, any number without GPUs schedules "
        "placeholders (tests).",
    )
    cpu_millis: int = Field(default=0, ge=0, description="CPU capacity reported; 0: this machine's cores.")
    memory_bytes: int = Field(default=0, ge=0, description="Memory capacity reported; 0: this machine's.")
    cgroup_parent: str = Field(
        default="",
        description="The cgroup (a path in the hierarchy, e.g. /tunelab-jobs; made if missing) the local "
        "executor puts each attempt's cgroup in, limited to the job's --resources. Empty: the trainer's "
        "own, which cgroup v2 allows only at the root (the trainer's log says so).",
    )
    agent_command: str = Field(
        default="",
        description="How to start the job agent (shell words, `--job …` is appended). Empty: the "
        "`tunelab` next to this Python, then on PATH, i.e. `tunelab agent`.",
    )
    agent_trainer_addr: str = Field(
        default="", description="host:port agents use to reach this service; empty: derived from host/port."
    )
    agent_cache_dir: Path | None = Field(
        default=None, description="Blob and environment cache of local agents; unset: data_dir/cache."
    )
    endpoint_host: str = Field(
        default="127.0.0.1",
        description="Host in the endpoints of server workloads the local executor runs (how the "
        "gateway reaches this machine, e.g. `trainer` in compose); the Kubernetes executor uses Services.",
    )
    work_dir: Path | None = Field(
        default=None, description="Where jobs without --working-dir run; unset: data_dir/trainer/work."
    )
    schedule_interval_s: float = Field(default=1.0, gt=0, description="Scheduler and monitor period.")
    report_interval_s: float = Field(default=2.0, gt=0, description="How often agents report.")
    heartbeat_timeout_s: float = Field(
        default=90.0, gt=0, description="An attempt whose agent is silent this long is failed as Lost."
    )
    output_commit_interval_s: float = Field(
        default=600.0, gt=0, description="Default period of output commits while a job runs."
    )
    cancel_grace_s: float = Field(default=30.0, ge=0, description="Default time from SIGTERM to SIGKILL.")
    backoff_limit: int = Field(default=3, ge=0, description="Default retries before a job is FAILED.")
    server_stable_s: float = Field(
        default=600.0,
        gt=0,
        description="A server job's attempt that ran this long was healthy: the restarts after it count "
        "against backoff_limit from zero again.",
    )
    backoff_base_s: float = Field(default=10.0, ge=0, description="First pause before a retry; doubles.")
    backoff_max_s: float = Field(default=600.0, ge=0, description="Longest pause before a retry.")
    priority_classes: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_PRIORITY_CLASSES),
        description='Priority classes, JSON: {"high": 100000, "medium": 10000, "low": 1000}.',
    )
    default_gpu_quota: int | None = Field(default=None, ge=0, description="gpu_quota of queues/default.")
    default_max_concurrent_jobs: int | None = Field(
        default=None, ge=1, description="max_concurrent_jobs of queues/default."
    )

    # -- where attempts run ------------------------------------------------------------------
    executor: Literal["local", "kubernetes"] = Field(
        default="local",
        description="local: agents are processes on this machine. kubernetes: each attempt is an "
        "Indexed Job + headless Service, or a Kubeflow TrainJob (TUNELAB_K8S_*); TUNELAB_GPUS is "
        "then the number of cluster GPUs the trainer hands out.",
    )
    k8s_namespace: str = Field(
        default="", description="Namespace of job pods; empty: the trainer's own (in cluster), else default."
    )
    k8s_job_image: str = Field(
        default="", description="Image of job pods: `tunelab agent` + recipes; a job's --image wins."
    )
    k8s_engine: Literal["job", "trainjob"] = Field(
        default="job", description="job: Indexed Job + headless Service. trainjob: Kubeflow Trainer v2."
    )
    k8s_kueue: bool = Field(
        default=True,
        description="Label jobs for Kueue (queue-name, priority-class) and create them suspended; "
        "false where Kueue is not installed.",
    )
    k8s_service_account: str = Field(default="", description="Service account of job pods.")
    k8s_token_secret: str = Field(
        default="",
        description="NAME or NAME/KEY (key auth-token) of the Secret job pods read the token from; "
        "empty: the token is written into each Job.",
    )
    k8s_cache_pvc: str = Field(
        default="", description="PVC (ReadWriteMany) for the agents' blob and environment cache."
    )
    k8s_image_pull_secrets: str = Field(default="", description="Comma-separated image pull Secrets.")
    k8s_run_as_user: int = Field(default=10001, ge=1, description="UID (and GID) of job pods; not root.")
    k8s_trainjob_runtime: str = Field(
        default="torch-distributed", description="ClusterTrainingRuntime of TrainJobs."
    )
    k8s_ttl_after_finished_s: int = Field(
        default=86400, ge=0, description="How long finished Jobs stay for inspection."
    )

    def trainer_dir(self) -> Path:
        return self.data_dir / "trainer"
