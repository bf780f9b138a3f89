"""The trainer's loop: admit queued jobs onto free resources, watch running attempts (lost
agents, silent agents, cancels past their grace period, deadlines), and pick up after a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from tunelab.common.errors import TunelabError, Unavailable
from tunelab.trainer.executor import AttemptStatus, Executor
from tunelab.trainer.lifecycle import Exit, Lifecycle
from tunelab.trainer.metrics import Snapshot, TrainerMetrics
from tunelab.trainer.records import (
    CANCELLING,
    FAILED,
    QUEUED,
    STARTING,
    AttemptRecord,
    Demand,
    JobRecord,
    server_port,
    workers,
)
from tunelab.trainer.references import References
from tunelab.trainer.registry import Registry
from tunelab.trainer.scheduler import QueueUsage, plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    interval_s: float = 1.0
    heartbeat_timeout_s: float = 90.0
    kill_margin_s: float = 60.0  # after a cancel's grace period, time for the agent to commit outputs
    lease_ttl_s: float = 7 * 24 * 3600.0


class Supervisor:
    def __init__(
        self,
        registry: Registry,
        lifecycle: Lifecycle,
        executor: Executor,
        refs: References,
        metrics: TrainerMetrics,
        timing: Timing,
    ) -> None:
        self.registry, self.lifecycle, self.executor = registry, lifecycle, executor
        self.refs, self.metrics, self.timing = refs, metrics, timing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the loop ---------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._run, name="trainer-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.lifecycle.kick.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("supervisor tick failed; trying again")
            self.lifecycle.kick.wait(self.timing.interval_s)
            self.lifecycle.kick.clear()

    def recover(self) -> None:
        """After a (re)start: attempts whose agents still run are re-attached and get a full
        heartbeat period to reconnect; the others are failed as Lost by the next tick."""
        now = time.time()
        for job in self.registry.active_jobs():
            att = job.current
            if att is not None and att.executor_ref and self.executor.alive(att.executor_ref):
                self.registry.update_attempt(job.id, att.number, last_report_time=now)
                log.info("re-attached", extra={"job": job.id, "attempt": att.number, "ref": att.executor_ref})

    def tick(self) -> None:
        self.monitor(time.time())
        self.admit(time.time())

    # -- running attempts -------------------------------------------------------------------
    def monitor(self, now: float) -> None:
        for job in self.registry.active_jobs():
            att = job.current
            if att is None:
                continue
            st = self.executor.status(att.executor_ref) if att.executor_ref else AttemptStatus(False)
            if not st.alive:
                self._lost(
                    job,
                    att,
                    st.message
                    or "the agent ended without reporting how the command ended (killed, out of memory, "
                    "the trainer restarted before it started, or its machine was lost)",
                    st.reason,
                )
                continue
            if st.pending:  # not started yet (a cluster queues it): no agent to hear from
                self._pending(job, att, st.pending, now)
                continue
            silent = now - (att.last_report_time or att.start_time)
            if silent > self.timing.heartbeat_timeout_s:
                self._lost(job, att, f"no report from the agent for {silent:.0f}s")
            elif job.state == CANCELLING and job.cancel_time is not None:
                grace = self.lifecycle.grace_of(job)
                if now > job.cancel_time + grace + self.timing.kill_margin_s:
                    self.executor.kill(att.executor_ref)
                    exit = Exit("Cancelled", f"killed: still running {grace:.0f}s after SIGTERM")
                    self.lifecycle.end_attempt(job.id, att.number, exit)
            elif job.spec.HasField("max_run_duration"):
                limit = job.spec.max_run_duration.ToTimedelta().total_seconds()
                if limit and now - att.start_time > limit:
                    self.lifecycle.cancel(job.id, "DeadlineExceeded")

    def _lost(self, job: JobRecord, att: AttemptRecord, message: str, reason: str = "") -> None:
        if att.executor_ref:
            self.executor.kill(att.executor_ref)  # whatever is left of the job's processes
        self.lifecycle.end_attempt(job.id, att.number, Exit(reason or "Lost", message))

    def _pending(self, job: JobRecord, att: AttemptRecord, why: str, now: float) -> None:
        self.registry.update_attempt(job.id, att.number, last_report_time=now)
        if job.state == STARTING and job.phase != why:
            with self.lifecycle.lock:
                current = self.registry.get_job(job.id)
                if current.state == STARTING and current.attempt == att.number:
                    self.registry.update_job(job.id, phase=why)

    # -- admission --------------------------------------------------------------------------
    def usage(self, active: list[JobRecord]) -> tuple[dict[str, QueueUsage], dict[str, str]]:
        per_queue: dict[str, QueueUsage] = {}
        owners: dict[str, str] = {}
        for job in active:
            used = per_queue.setdefault(job.queue, QueueUsage())
            used.demand = used.demand + Demand.of(job.spec)
            used.running += 1
            if job.current is not None:
                owners.update({gpu: job.name for gpu in job.current.gpus})
        return per_queue, owners

    def admit(self, now: float) -> None:
        queued = self.registry.queued_in_order()
        if not queued:
            return
        per_queue, owners = self.usage(self.registry.active_jobs())
        free = [str(g.index) for g in self.executor.gpus() if str(g.index) not in owners]
        queues = {q.id: q for q in self.registry.list_queues()}
        p = plan(queued, queues, per_queue, free, now)
        started = set()
        for adm in p.admissions:
            job = next(j for j in queued if j.id == adm.job_id)
            if self._start(job, adm.gpus, now):
                started.add(job.id)
        for job in queued:
            phase = p.waiting.get(job.id, "")
            if job.id not in started and phase and job.phase != phase:
                self._set_phase(job.id, phase)

    def _set_phase(self, job_id: str, phase: str) -> None:
        with self.lifecycle.lock:
            if self.registry.get_job(job_id).state == QUEUED:
                self.registry.update_job(job_id, phase=phase)

    def _start(self, job: JobRecord, gpus: list[str], now: float) -> bool:
        number = job.attempt + 1
        env_key = lease = ""
        if job.spec.environment:
            holder = f"jobs/{job.id}/attempts/{number}"
            try:
                pinned = self.refs.pin_environment(job.spec.environment, holder, self.timing.lease_ttl_s)
            except Unavailable as exc:
                self._set_phase(job.id, f"waiting: {exc.message}")
                return False
            except TunelabError as exc:
                with self.lifecycle.lock:
                    self.registry.update_job(
                        job.id,
                        state=FAILED,
                        reason="EnvironmentUnavailable",
                        message=exc.message,
                        end_time=now,
                    )
                return False
            if pinned is None:
                self._set_phase(job.id, f"waiting for {job.spec.environment} to finish building")
                return False
            env_key, lease = pinned
        placement = self.executor.place(job.id, number, workers(job.spec), gpus, server_port(job.spec))
        with self.lifecycle.lock:
            current = self.registry.get_job(job.id)
            if current.state != QUEUED or current.attempt != job.attempt:
                return False  # cancelled or deleted meanwhile
            self.registry.insert_attempt(
                AttemptRecord(
                    job.id,
                    number,
                    STARTING,
                    start_time=now,
                    gpus=tuple(gpus),
                    node=placement.node,
                    env_key=env_key,
                    lease=lease,
                    env_vars=placement.env_vars,
                    worker_count=placement.worker_count,
                    last_report_time=now,
                    endpoint=placement.endpoint,
                )
            )
            self.registry.update_job(
                job.id,
                state=STARTING,
                phase="starting the agent",
                attempt=number,
                start_time=current.start_time or now,
                not_before=None,
                exit_code=None,
            )
        try:
            ref = self.executor.start(job.id, number, placement)
        except (OSError, TunelabError) as exc:
            why = exc.message if isinstance(exc, TunelabError) else str(exc)
            self.lifecycle.end_attempt(
                job.id, number, Exit("ExecutorError", f"cannot start the agent: {why}")
            )
            return True
        self.registry.update_attempt(job.id, number, executor_ref=ref)
        self.metrics.admitted.inc()
        if self.registry.get_job(job.id).state == CANCELLING:  # cancelled while it started
            self.executor.stop(ref)
        return True

    # -- metrics ----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        active = self.registry.active_jobs()
        per_queue, owners = self.usage(active)
        queued: dict[str, int] = {}
        for job in self.registry.queued_in_order():
            queued[job.queue] = queued.get(job.queue, 0) + 1
        return Snapshot(
            jobs_by_state=self.registry.count_by_state(),
            queued=queued,
            running={q: u.running for q, u in per_queue.items()},
            queue_gpus={q: u.demand.gpus for q, u in per_queue.items()},
            gpus={str(g.index): owners.get(str(g.index), "") for g in self.executor.gpus()},
            points={j.name: j.latest_metrics for j in active if j.latest_metrics is not None},
        )
