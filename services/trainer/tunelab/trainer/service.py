"""Assembles the trainer's domain from settings: ``build_trainer(settings)``."""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tunelab.common.grpc.channel import open_channel
from tunelab.common.ownership import Ownership, replica_name
from tunelab.common.state import open_database
from tunelab.trainer import convert
from tunelab.trainer.agentapi import AgentApi, Intervals
from tunelab.trainer.claims import Claims
from tunelab.trainer.eventlog import EventLog
from tunelab.trainer.executor import Executor
from tunelab.trainer.gpus import inventory
from tunelab.trainer.jobs import JobService
from tunelab.trainer.kube.api import KubeApi
from tunelab.trainer.kube.factory import build_executor
from tunelab.trainer.lifecycle import Backoff, Lifecycle
from tunelab.trainer.local import LocalExecutor
from tunelab.trainer.metrics import TrainerMetrics
from tunelab.trainer.queues import QueueService
from tunelab.trainer.references import GrpcReferences, References
from tunelab.trainer.registry import Registry
from tunelab.trainer.settings import TrainerSettings
from tunelab.trainer.supervisor import Supervisor, Timing
from tunelab.trainer.tables import jobs_t, metadata, upgrade
from tunelab.trainer.v1 import trainer_pb2 as pb
from tunelab.trainer.validation import Defaults


@dataclass
class Trainer:
    jobs: JobService
    queues: QueueService
    agents: AgentApi
    supervisor: Supervisor
    executor: Executor
    metrics: TrainerMetrics
    channels: list[grpc.Channel] = field(default_factory=list)

    def capacity(self) -> pb.Capacity:
        _, owners = self.supervisor.usage(self.supervisor.registry.active_jobs())
        ex = self.executor
        return convert.capacity_to_pb(ex.name, ex.gpus(), owners, ex.cpu_millis(), ex.memory_bytes())

    def start(self) -> None:
        self.supervisor.start()

    def close(self) -> None:
        self.supervisor.stop()
        if isinstance(self.executor, LocalExecutor):
            self.executor.close()
        for channel in self.channels:
            channel.close()


def agent_argv(setting: str) -> list[str]:
    """The command that starts a job agent (``--job …`` is appended)."""
    if setting:
        return shlex.split(setting)
    beside = Path(sys.executable).parent / "tunelab"
    if beside.exists():
        return [str(beside), "agent"]
    if found := shutil.which("tunelab"):
        return [found, "agent"]
    return [sys.executable, "-c", "from tunelab.cli.main import main; main()", "agent"]


def agent_env(settings: TrainerSettings) -> dict[str, str]:
    """What local agents are told: where the services are, the token, their cache."""
    cache = settings.agent_cache_dir or settings.data_dir / "cache"
    env = {
        "TUNELAB_DATASETS_ADDR": settings.datasets_addr,
        "TUNELAB_ENVIRONMENTS_ADDR": settings.environments_addr,
        "TUNELAB_CACHE_DIR": str(cache),
        "TUNELAB_TOKEN": settings.auth_token.get_secret_value(),
    }
    if settings.agent_trainer_addr:
        env["TUNELAB_TRAINER_ADDR"] = settings.agent_trainer_addr
    return env


def build_trainer(
    settings: TrainerSettings,
    *,
    executor: Executor | None = None,
    refs: References | None = None,
    kube_api: KubeApi | None = None,
) -> Trainer:
    """``kube_api``: the Kubernetes API of TUNELAB_EXECUTOR=kubernetes; unset: the cluster's."""
    base = settings.trainer_dir()
    engine = open_database(settings.state_url, base / "state.sqlite", metadata)
    upgrade(engine)
    registry, events = Registry(engine), EventLog(engine)
    token = settings.auth_token.get_secret_value()
    channels: list[grpc.Channel] = []
    if refs is None:
        datasets = open_channel(settings.datasets_addr, token)
        environments = open_channel(settings.environments_addr, token)
        channels = [datasets, environments]
        refs = GrpcReferences(datasets, environments, settings.datasets_addr, settings.environments_addr)
    if executor is None and settings.executor == "kubernetes":
        executor = build_executor(settings, agent_env(settings), registry, kube_api)
    if executor is None:
        gpus = inventory(settings.gpus)
        executor = LocalExecutor(
            agent_argv(settings.agent_command),
            base / "runs",
            agent_env(settings),
            gpus,
            settings.cpu_millis,
            settings.memory_bytes,
            settings.endpoint_host,
            spec_of=lambda job_id: registry.get_job(job_id).spec,
            cgroup_parent=settings.cgroup_parent,
            work_root=settings.work_dir or base / "work",
        )
    metrics = TrainerMetrics()
    backoff = Backoff(settings.backoff_base_s, settings.backoff_max_s)
    lifecycle = Lifecycle(
        registry, executor, refs, metrics, backoff, settings.cancel_grace_s, settings.server_stable_s
    )
    timing = Timing(
        interval_s=settings.schedule_interval_s,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        kill_margin_s=max(30.0, 5 * settings.report_interval_s),
    )
    me = replica_name(settings.replica_id, settings.data_dir)
    claims = Claims(engine, Ownership(engine, jobs_t, me, settings.replica_lease_s))
    supervisor = Supervisor(registry, lifecycle, executor, refs, metrics, timing, claims)
    metrics.observe_state(supervisor.snapshot)
    defaults = Defaults(
        work_root=settings.work_dir or base / "work",
        priority_classes=settings.priority_classes,
        backoff_limit=settings.backoff_limit,
    )
    source = "TUNELAB_GPUS" if settings.gpus is not None else "found by NVML; without GPUs, set TUNELAB_GPUS"
    if executor.name == "kubernetes" and settings.gpus is None:
        source = "TUNELAB_GPUS is unset: set it to the cluster GPUs the trainer may hand out"
    jobs = JobService(registry, events, lifecycle, executor, refs, defaults, source)
    queues = QueueService(registry, supervisor)
    queues.ensure_default(settings.default_gpu_quota, settings.default_max_concurrent_jobs)
    agents = AgentApi(
        registry,
        events,
        lifecycle,
        metrics,
        Intervals(settings.report_interval_s, settings.output_commit_interval_s),
    )
    return Trainer(jobs, queues, agents, supervisor, executor, metrics, channels)
