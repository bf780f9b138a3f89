"""Settings of the trainer service (``TUNELAB_*``)."""

from __future__ import annotations

from pathlib import Path

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

    def trainer_dir(self) -> Path:
        return self.data_dir / "trainer"
