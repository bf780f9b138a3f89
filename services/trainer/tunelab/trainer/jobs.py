"""Jobs as users see them: submit, read, list, cancel, restart, delete, watch, logs and metrics."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tunelab.common.errors import FailedPrecondition, InvalidArgument, NotFound
from tunelab.common.names import check_id
from tunelab.trainer.eventlog import EventLog, LogLine
from tunelab.trainer.executor import Executor
from tunelab.trainer.lifecycle import Lifecycle
from tunelab.trainer.records import QUEUED, TERMINAL, Demand, JobRecord, workers
from tunelab.trainer.references import References
from tunelab.trainer.registry import Registry
from tunelab.trainer.scheduler import beyond_capacity, never_fits
from tunelab.trainer.v1 import trainer_pb2 as pb
from tunelab.trainer.validation import Defaults, normalize

LOG_BATCH = 500


@dataclass(frozen=True)
class JobFilter:
    queue: str = ""
    states: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


def job_id_for(display_name: str) -> str:
    """A fresh id from a display name: ``Finetune ChatGLM3`` → ``finetune-chatglm3-x7k2p``."""
    base = re.sub(r"[^a-z0-9]+", "-", display_name.lower()).strip("-")[:50].strip("-") or "job"
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return f"{base}-{''.join(secrets.choice(alphabet) for _ in range(5))}"


class JobService:
    def __init__(
        self,
        registry: Registry,
        events: EventLog,
        lifecycle: Lifecycle,
        executor: Executor,
        refs: References,
        defaults: Defaults,
        gpu_source: str,
    ) -> None:
        self.registry, self.events, self.lifecycle = registry, events, lifecycle
        self.executor, self.refs, self.defaults = executor, refs, defaults
        self.gpu_source = gpu_source

    # -- submit -----------------------------------------------------------------------------
    def create(self, job_id: str, spec: pb.JobSpec, validate_only: bool = False) -> JobRecord:
        job_id = check_id(job_id, "job_id") if job_id else job_id_for(spec.display_name)
        spec = normalize(job_id, spec, self.defaults)
        queue = self.registry.get_queue(spec.queue.removeprefix("queues/"))
        total = len(self.executor.gpus())
        problem = never_fits(Demand.of(spec), workers(spec), queue, total, self.gpu_source)
        ex = self.executor
        problem = problem or beyond_capacity(spec, ex.name, ex.cpu_millis(), ex.memory_bytes())
        if problem:
            raise FailedPrecondition(f"refused: {problem}")
        resolved = [self.refs.resolve_mount(m) for m in spec.datasets]
        del spec.datasets[:]
        spec.datasets.extend(resolved)
        if spec.environment:
            self.refs.check_environment(spec.environment)
        now = time.time()
        rec = JobRecord(
            id=job_id,
            spec=spec,
            queue=queue.id,
            priority=spec.priority,
            state=QUEUED,
            create_time=now,
            update_time=now,
        )
        if validate_only:
            return rec
        created = self.registry.insert_job(rec)
        self.lifecycle.kick.set()
        return created  # as created: the scheduler may claim it before a re-read

    # -- read -------------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord:
        return self.registry.get_job(job_id)

    def list_jobs(self, f: JobFilter, page_token: str, page_size: int) -> tuple[list[JobRecord], str]:
        jobs = self.registry.jobs(states=f.states, queue=f.queue, with_attempts=True)
        if f.labels:
            jobs = [j for j in jobs if all(j.spec.labels.get(k) == v for k, v in f.labels)]
        try:
            start = int(page_token or 0)
        except ValueError:
            raise InvalidArgument(f"page_token {page_token!r} is not one this server gave") from None
        size = page_size if 0 < page_size <= 1000 else 100
        page = jobs[start : start + size]
        return page, str(start + size) if start + size < len(jobs) else ""

    def queue_positions(self) -> dict[str, int]:
        positions: dict[str, int] = {}
        per_queue: dict[str, int] = {}
        for job in self.registry.queued_in_order():
            per_queue[job.queue] = per_queue.get(job.queue, 0) + 1
            positions[job.id] = per_queue[job.queue]
        return positions

    def watch(
        self, job_id: str, active: Callable[[], bool] = lambda: True, min_interval_s: float = 0.25
    ) -> Iterator[JobRecord]:
        for rec in self.registry.watch_job(job_id, active):
            yield rec
            if not rec.terminal:
                time.sleep(min_interval_s)  # a few messages a second at most

    def logs(
        self,
        job_id: str,
        follow: bool = False,
        after_line: int = 0,
        tail: int = 0,
        attempt: int | None = None,
        worker: int | None = None,
        active: Callable[[], bool] = lambda: True,
    ) -> Iterator[list[LogLine]]:
        """Batches of log lines; with ``follow``, until the job ends or ``active()`` turns false."""
        self.registry.get_job(job_id)
        after = after_line or (self.events.tail_start(job_id, tail, attempt, worker) if tail > 0 else 0)
        while active():
            try:
                finished = self.registry.get_job(job_id).state in TERMINAL
            except NotFound:
                return
            lines = self.events.read_logs(job_id, after, LOG_BATCH, attempt, worker)
            if lines:
                yield lines
                after = lines[-1].line_number
                continue
            if not follow or finished:
                return
            self.registry.wait(1.0)

    def metrics(
        self,
        job_id: str,
        page_token: str,
        page_size: int,
        attempt: int | None = None,
        after_step: int = 0,
        eval_only: bool = False,
    ) -> tuple[list[pb.MetricsPoint], str]:
        self.registry.get_job(job_id)
        try:
            after = int(page_token or 0)
        except ValueError:
            raise InvalidArgument(f"page_token {page_token!r} is not one this server gave") from None
        size = page_size if 0 < page_size <= 10000 else 1000
        rows = self.events.list_metrics(job_id, after, size + 1, attempt, after_step, eval_only)
        more = len(rows) > size
        rows = rows[:size]
        return [p for _, p in rows], str(rows[-1][0]) if more else ""

    # -- change -----------------------------------------------------------------------------
    def cancel(self, job_id: str, grace_s: float | None = None) -> JobRecord:
        job = self.lifecycle.cancel(job_id, "Cancelled", grace_s)
        self.lifecycle.kick.set()
        return job

    def restart(self, job_id: str) -> JobRecord:
        with self.registry.locked(job_id) as tx:
            job = tx.job
            if not job.terminal:
                raise FailedPrecondition(
                    f"job {job_id} is {job.state}; only a finished job can be restarted (cancel it first)"
                )
            job = tx.update(
                state=QUEUED,
                reason="Restarted",
                message=f"restarted after attempt {job.attempt} ({job.state.lower()})",
                phase="",
                failures=0,
                not_before=None,
                end_time=None,
                cancel_reason="",
                cancel_grace_s=None,
                cancel_time=None,
            )
        self.lifecycle.kick.set()
        return job

    def delete(self, job_id: str, force: bool = False) -> None:
        with self.registry.locked(job_id) as tx:
            job = tx.job
            if not job.terminal and not force:
                raise FailedPrecondition(
                    f"job {job_id} is {job.state}; cancel it first, or delete it with --force"
                )
            tx.delete()
        # Its agents, wherever they report, hear that the attempt is gone and exit; here they
        # are ended at once.
        att = job.current
        if not job.terminal and att is not None and att.executor_ref:
            self.executor.kill(att.executor_ref)
        if att is not None and att.end_time is None and att.lease:
            self.lifecycle.release_lease(att.lease)
        self.lifecycle.kick.set()
