"""The trainer's Prometheus metrics, all declared here.

Counters are bumped as things happen; gauges (jobs by state, queue depth, GPU allocation, and the
training metrics agents relay for running jobs) are read from the state at scrape time, so they
are right after a restart and carry no stale labels for jobs that ended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from tunelab.trainer.records import STATES
from tunelab.trainer.v1 import trainer_pb2 as pb


@dataclass
class Snapshot:
    jobs_by_state: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)  # queue → jobs waiting
    running: dict[str, int] = field(default_factory=dict)  # queue → jobs holding resources
    queue_gpus: dict[str, int] = field(default_factory=dict)  # queue → GPUs in use
    gpus: dict[str, str] = field(default_factory=dict)  # GPU index → job using it ("" when free)
    points: dict[str, pb.MetricsPoint] = field(default_factory=dict)  # running job → latest point


# Relayed training metrics: (metric suffix, help, how to read the point).
JOB_GAUGES: list[tuple[str, str, Callable[[pb.MetricsPoint], float | None]]] = [
    ("step", "Training step of the job's latest metrics.", lambda p: float(p.step)),
    ("loss", "Training loss the job reported last.", lambda p: p.loss if p.HasField("loss") else None),
    (
        "learning_rate",
        "Learning rate the job reported last.",
        lambda p: p.learning_rate if p.HasField("learning_rate") else None,
    ),
    (
        "tokens_per_second",
        "Training throughput the job reported last (tokens/s).",
        lambda p: p.tokens_per_second if p.HasField("tokens_per_second") else None,
    ),
    (
        "progress_ratio",
        "Fraction of the job's training done (0-1).",
        lambda p: p.progress if p.HasField("progress") else None,
    ),
    (
        "gpu_memory_bytes",
        "Peak GPU memory the job reported last.",
        lambda p: float(p.gpu_memory_bytes) if p.HasField("gpu_memory_bytes") else None,
    ),
]


class _StateCollector:
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        jobs = GaugeMetricFamily("tunelab_trainer_jobs", "Jobs by state.", labels=["state"])
        for state in STATES:
            jobs.add_metric([state.lower()], s.jobs_by_state.get(state, 0))
        yield jobs
        depth = GaugeMetricFamily("tunelab_trainer_queue_depth", "Jobs waiting in a queue.", labels=["queue"])
        running = GaugeMetricFamily(
            "tunelab_trainer_queue_running_jobs", "Jobs of a queue holding resources.", labels=["queue"]
        )
        qgpus = GaugeMetricFamily(
            "tunelab_trainer_queue_gpus_in_use", "GPUs held by a queue's jobs.", labels=["queue"]
        )
        for queue in sorted(set(s.queued) | set(s.running)):
            depth.add_metric([queue], s.queued.get(queue, 0))
            running.add_metric([queue], s.running.get(queue, 0))
            qgpus.add_metric([queue], s.queue_gpus.get(queue, 0))
        yield from (depth, running, qgpus)
        total = GaugeMetricFamily("tunelab_trainer_gpus", "GPUs the executor schedules.")
        total.add_metric([], len(s.gpus))
        allocated = GaugeMetricFamily("tunelab_trainer_gpus_allocated", "GPUs assigned to running jobs.")
        allocated.add_metric([], sum(1 for job in s.gpus.values() if job))
        per_gpu = GaugeMetricFamily(
            "tunelab_trainer_gpu_allocated", "1 when the GPU is assigned to a job.", labels=["gpu", "job"]
        )
        for gpu, job in sorted(s.gpus.items()):
            per_gpu.add_metric([gpu, job], 1 if job else 0)
        yield from (total, allocated, per_gpu)
        for suffix, doc, read in JOB_GAUGES:
            family = GaugeMetricFamily(f"tunelab_trainer_job_{suffix}", doc, labels=["job"])
            for job, point in sorted(s.points.items()):
                value = read(point)
                if value is not None:
                    family.add_metric([job], value)
            yield family


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.attempts = Counter(
            "tunelab_trainer_attempts", "Attempts that ended, by result.", ["result"], registry=self.registry
        )
        self.admitted = Counter("tunelab_trainer_admissions", "Attempts started.", registry=self.registry)
        self.agent_events = Counter(
            "tunelab_trainer_agent_events",
            "Events agents reported, by kind.",
            ["kind"],
            registry=self.registry,
        )

    def attempt_ended(self, state: str) -> None:
        self.attempts.labels(state.lower()).inc()

    def observe_state(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry.register(_StateCollector(snapshot))  # type: ignore[arg-type]
