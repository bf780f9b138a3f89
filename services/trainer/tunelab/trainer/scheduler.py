"""Admission: which queued jobs start now, and on which GPUs. Pure functions over records.

Jobs are considered by priority (highest first), then submission time. Within a queue the order
is strict: when the job at the head cannot start (its queue's quota or the free GPUs do not
allow it), later jobs of that queue wait too, so a large job is not starved by small ones. Jobs
backing off after a failure are skipped without blocking their queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.trainer.quantities import cpu_quantity, cpus, memory, memory_quantity
from tunelab.trainer.records import Demand, JobRecord, QueueRecord, workers
from tunelab.trainer.v1 import trainer_pb2 as pb


@dataclass(frozen=True)
class Admission:
    job_id: str
    gpus: list[str]


@dataclass
class QueueUsage:
    demand: Demand = field(default_factory=Demand)
    running: int = 0
    queued: int = 0


@dataclass(frozen=True)
class Plan:
    admissions: list[Admission]
    waiting: dict[str, str]  # job id → why it waits


def quota_problem(q: QueueRecord, used: QueueUsage, d: Demand) -> str:
    if q.max_concurrent_jobs is not None and used.running + 1 > q.max_concurrent_jobs:
        return f"queue {q.id} runs {used.running} of at most {q.max_concurrent_jobs} jobs"
    checks = (
        ("GPUs", q.gpu_quota, used.demand.gpus, d.gpus),
        ("CPU millis", q.cpu_quota_millis, used.demand.cpu_millis, d.cpu_millis),
        ("memory bytes", q.memory_quota_bytes, used.demand.memory_bytes, d.memory_bytes),
    )
    for what, quota, in_use, wanted in checks:
        if quota is not None and in_use + wanted > quota:
            return f"queue {q.id} has {quota - in_use} of its {quota} {what} free, the job needs {wanted}"
    return ""


def plan(
    queued: list[JobRecord],
    queues: dict[str, QueueRecord],
    usage: dict[str, QueueUsage],
    free_gpus: list[str],
    now: float,
) -> Plan:
    """``queued`` in priority order; ``usage`` is updated as jobs are admitted."""
    free = list(free_gpus)
    blocked: set[str] = set()
    admissions: list[Admission] = []
    waiting: dict[str, str] = {}
    for job in queued:
        if job.not_before is not None and job.not_before > now:
            waiting[job.id] = f"retrying in {job.not_before - now:.0f}s (attempt {job.attempt + 1})"
            continue
        q = queues.get(job.queue)
        if q is None:
            waiting[job.id] = f"queue {job.queue} does not exist"
            continue
        if q.state == "PAUSED":
            waiting[job.id] = f"queue {q.id} is paused"
            continue
        if q.id in blocked:
            waiting[job.id] = f"behind a higher-priority or earlier job of queue {q.id}"
            continue
        used = usage.setdefault(q.id, QueueUsage())
        d = Demand.of(job.spec)
        problem = quota_problem(q, used, d)
        if not problem and d.gpus > len(free):
            problem = f"waiting for {d.gpus} GPU(s); {len(free)} free"
        if problem:
            waiting[job.id] = problem
            blocked.add(q.id)
            continue
        gpus, free = free[: d.gpus], free[d.gpus :]
        admissions.append(Admission(job.id, gpus))
        used.demand = used.demand + d
        used.running += 1
    return Plan(admissions, waiting)


def never_fits(d: Demand, workers: int, q: QueueRecord, total_gpus: int, gpu_source: str) -> str:
    """Why a job can never start in queue ``q`` (the numbers), or "" when it can."""
    per = f" ({d.gpus // workers} per worker x {workers} workers)" if workers > 1 and d.gpus else ""
    if d.gpus > total_gpus:
        return (
            f"the job asks for {d.gpus} GPU(s){per} but the executor has {total_gpus} ({gpu_source}); "
            "ask for fewer with --resources nvidia.com/gpu=N"
        )
    if q.gpu_quota is not None and d.gpus > q.gpu_quota:
        return (
            f"the job asks for {d.gpus} GPU(s){per} but queue {q.id} has a quota of {q.gpu_quota}; "
            f"ask for fewer, or raise it: tunelab queue update {q.id} --gpu-quota {d.gpus}"
        )
    if q.cpu_quota_millis is not None and d.cpu_millis > q.cpu_quota_millis:
        return (
            f"the job asks for {d.cpu_millis / 1000:g} CPUs but queue {q.id} has a quota of "
            f"{q.cpu_quota_millis / 1000:g}"
        )
    if q.memory_quota_bytes is not None and d.memory_bytes > q.memory_quota_bytes:
        return (
            f"the job asks for {d.memory_bytes} bytes of memory but queue {q.id} has a quota of "
            f"{q.memory_quota_bytes}"
        )
    return ""


def beyond_capacity(spec: pb.JobSpec, executor: str, cpu_millis: int, memory_bytes: int) -> str:
    """Why a job's CPU or memory never fits the executor's capacity (the numbers), or "" when it
    fits or the executor does not know its capacity (0). All workers count together: locally they
    share this machine, on a cluster they share what the trainer hands out."""
    n = workers(spec)
    requests = spec.HasField("requests")
    per = spec.requests if requests else spec.resources
    cpu, mem = per.cpu_millis * n, per.memory_bytes * n
    if cpu_millis and cpu > cpu_millis:
        asked, total, setting = f"cpu={cpu_quantity(per.cpu_millis)}", cpus(cpu), f"TUNELAB_CPU_MILLIS={cpu}"
    elif memory_bytes and mem > memory_bytes:
        asked, total = f"memory={memory_quantity(per.memory_bytes)}", f"{memory(mem)} memory"
        setting = f"TUNELAB_MEMORY_BYTES={mem}"
    else:
        return ""
    offers = [cpus(cpu_millis)] if cpu_millis else []
    offers += [f"{memory(memory_bytes)} memory"] if memory_bytes else []
    times = f" x {n} workers = {total}" if n > 1 else ""
    flag = "--requests-resources" if requests else "--resources"
    return (
        f"{'requests' if requests else 'resources'}: {asked} per worker{times}, but the {executor} "
        f"executor offers {' and '.join(offers)}; lower {flag} or raise the trainer's capacity ({setting})"
    )
