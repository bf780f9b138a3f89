"""Claims: which replica starts a queued job, and which one watches a running one.

A queued job is claimed in one transaction (``claim``). The queue's row is locked, so the quota
checks of one queue run one at a time across replicas; the GPU pool's row too when the job wants
GPUs; and the job's own row with SKIP LOCKED, so a job another replica is claiming at that moment is
skipped, not waited for. Inside the transaction the queue's usage and the GPUs in use are read again
from the database rather than taken from the snapshot the plan was made from: replicas never overrun
a quota nor share a GPU. SQLite ignores row locks; there ``serialized`` begins the transaction
IMMEDIATE, which runs the whole claim alone instead.

The replica that claims a job owns it (``tunelab.common.ownership``) while its attempt runs: it
renews that every tick and alone watches the attempt (heartbeats, cancels, deadlines). A job whose
owner stopped renewing is taken over by another replica, which re-attaches its agents.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection, Engine, and_, select

from tunelab.common.ownership import Ownership
from tunelab.common.state import serialized
from tunelab.trainer.records import ACTIVE, QUEUED, STARTING, AttemptRecord, Demand, JobRecord
from tunelab.trainer.registry import queue_of, write_attempt, write_job
from tunelab.trainer.scheduler import QueueUsage, quota_problem
from tunelab.trainer.tables import GPU_LOCK, attempts_t, claim_locks_t, jobs_t, queues_t
from tunelab.trainer.v1 import trainer_pb2 as pb

# Why a claim did not happen when another replica (or a cancel, a delete) got to the job first.
TAKEN = "taken meanwhile"

# What a job's row says once no replica owns it (its attempt ended).
RELEASED: dict[str, Any] = {"owner": "", "owned_until": None}


def _usage(db: Connection, queue_id: str) -> QueueUsage:
    used = QueueUsage()
    active = select(jobs_t.c.spec).where(jobs_t.c.queue == queue_id, jobs_t.c.state.in_(ACTIVE))
    for (spec,) in db.execute(active):
        used.demand = used.demand + Demand.of(pb.JobSpec.FromString(spec))
        used.running += 1
    return used


def _gpus_taken(db: Connection, wanted: tuple[str, ...]) -> str:
    if not wanted:
        return ""
    current = and_(attempts_t.c.job_id == jobs_t.c.id, attempts_t.c.number == jobs_t.c.attempt)
    rows = db.execute(
        select(attempts_t.c.gpus)
        .select_from(attempts_t.join(jobs_t, current))
        .where(jobs_t.c.state.in_(ACTIVE))
    )
    held = {gpu for (gpus,) in rows for gpu in json.loads(gpus)}
    if taken := sorted(held & set(wanted)):
        return f"GPU(s) {', '.join(taken)} were taken meanwhile; waiting for others"
    return ""


class Claims:
    def __init__(self, engine: Engine, ownership: Ownership) -> None:
        self.engine, self.ownership = engine, ownership
        self._renewed = 0.0

    @property
    def me(self) -> str:
        return self.ownership.me

    def claim(self, job: JobRecord, attempt: AttemptRecord, phase: str) -> str:
        """Records ``attempt`` of the queued ``job`` as started by this replica; "" when it did,
        else why not (TAKEN, or the quota or the GPUs as they are now)."""
        with serialized(self.engine) as db:
            queue_row = db.execute(
                select(queues_t).where(queues_t.c.id == job.queue).with_for_update()
            ).first()
            if queue_row is None:
                return f"queue {job.queue} does not exist"
            if attempt.gpus:
                db.execute(select(claim_locks_t).where(claim_locks_t.c.name == GPU_LOCK).with_for_update())
            mine = db.execute(
                select(jobs_t.c.start_time)
                .where(jobs_t.c.id == job.id, jobs_t.c.state == QUEUED, jobs_t.c.attempt == job.attempt)
                .with_for_update(skip_locked=True)
            ).first()
            if mine is None:
                return TAKEN
            queue = queue_of(queue_row)
            if queue.state == "PAUSED":
                return f"queue {queue.id} is paused"
            problem = quota_problem(queue, _usage(db, queue.id), Demand.of(job.spec))
            if problem := problem or _gpus_taken(db, attempt.gpus):
                return problem
            now = time.time()  # after the attempts it waited for ended: their end times come before
            attempt = replace(attempt, start_time=now, last_report_time=now)
            write_attempt(db, attempt)
            changes = {
                "state": STARTING,
                "phase": phase,
                "attempt": attempt.number,
                "start_time": mine.start_time or attempt.start_time,
                "not_before": None,
                "exit_code": None,
            }
            write_job(db, job.id, {**changes, **self.ownership.held()})
        return ""

    def renew(self) -> None:
        """Extends this replica's hold on the jobs it runs, every third of the lease."""
        now = time.monotonic()
        if now - self._renewed >= self.ownership.lease_s / 3:
            self.ownership.renew_where(jobs_t.c.state.in_(ACTIVE))
            self._renewed = now

    def take_over(self, mine: bool) -> list[str]:
        """Takes the running jobs nobody holds (their replica died; with ``mine``, also those of this
        replica's earlier run); returns their ids."""
        return [row.id for row in self.ownership.claim_free(jobs_t.c.state.in_(ACTIVE), mine=mine)]
