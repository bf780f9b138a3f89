"""The trainer's loop: admit queued jobs onto free resources, watch running attempts (lost
agents, silent agents, cancels past their grace period, deadlines), and pick up after a restart.

Replicas share the loop's work through the database (``claims``): each admits jobs by claiming
them, watches only the attempts it owns, renews its hold on those every tick, and takes over the
attempts of a replica that stopped renewing.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from tunelab.common.errors import NotFound, TunelabError, Unavailable
from tunelab.trainer.claims import TAKEN, Claims
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
        claims: Claims,
    ) -> None:
        self.registry, self.lifecycle, self.executor = registry, lifecycle, executor
        self.refs, self.metrics, self.timing = refs, metrics, timing
        self.claims = claims
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
        """After a (re)start: the attempts this replica ran before (and any nobody holds) are
        taken and re-attached; see ``take_over``."""
        self._reattach(self.claims.take_over(mine=True))

    def take_over(self) -> None:
        """Takes the attempts of replicas that stopped renewing their hold (they died) and
        re-attaches them."""
        self._reattach(self.claims.take_over(mine=False))

    def _reattach(self, job_ids: list[str]) -> None:
        """Attempts whose agents still run get a full heartbeat period to reach this replica; the
        others are failed as Lost by the next tick."""
        now = time.time()
        for job_id in job_ids:
            try:
                att = self.registry.get_job(job_id).current
            except NotFound:
                continue
            if att is not None and att.executor_ref and self.executor.alive(att.executor_ref):
                self.registry.update_attempt(job_id, att.number, last_report_time=now)
                log.info("re-attached", extra={"job": job_id, "attempt": att.number, "ref": att.executor_ref})

    def tick(self) -> None:
        self.claims.renew()
        self.take_over()
        self.monitor(time.time())
        self.admit(time.time())

    # -- running attempts -------------------------------------------------------------------
    def monitor(self, now: float) -> None:
        for job in self.registry.active_jobs():
            att = job.current
            if att is None or job.owner != self.claims.me:  # another replica watches it
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
            with self.registry.locked(job.id) as tx:
                if tx.job.state == STARTING and tx.job.attempt == att.number:
                    tx.update(phase=why)

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

    def _set_phase(self, job_id: str, phase: str, attempt: int | None = None) -> None:
        try:
            with self.registry.locked(job_id) as tx:
                if tx.job.state == QUEUED and attempt in (None, tx.job.attempt):
                    tx.update(phase=phase)
        except NotFound:
            pass  # deleted meanwhile

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
                self._fail_queued(job, "EnvironmentUnavailable", exc.message, now)
                return False
            if pinned is None:
                self._set_phase(job.id, f"waiting for {job.spec.environment} to finish building")
                return False
            env_key, lease = pinned
        placement = self.executor.place(job.id, number, workers(job.spec), gpus, server_port(job.spec))
        attempt = AttemptRecord(
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
        why = self.claims.claim(job, attempt, "starting the agent")
        if why:  # another replica started it, it was cancelled or deleted, or its quota is used up now
            self.lifecycle.release_lease(lease)
            if why != TAKEN:
                self._set_phase(job.id, why, job.attempt)
            return False
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

    def _fail_queued(self, job: JobRecord, reason: str, message: str, now: float) -> None:
        try:
            with self.registry.locked(job.id) as tx:
                if tx.job.state == QUEUED and tx.job.attempt == job.attempt:
                    tx.update(state=FAILED, reason=reason, message=message, end_time=now)
        except NotFound:
            pass  # deleted meanwhile

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
