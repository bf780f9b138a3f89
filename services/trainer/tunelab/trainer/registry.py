"""The trainer's state: queues, jobs and attempts (SQLite by default, Postgres for replicas).

Every write to a job bumps its revision and wakes waiters, so WatchJob and followed logs stream
changes as they happen (and poll, for changes made by another process). A change that depends on
what the job is now (cancel, the end of an attempt, restart) runs in ``locked``: the job's row is
locked in the database, so replicas sharing it never interleave such changes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from tunelab.common.errors import AlreadyExists, NotFound
from tunelab.common.state import serialized
from tunelab.trainer.records import ACTIVE, QUEUED, AttemptRecord, JobRecord, QueueRecord
from tunelab.trainer.tables import attempts_t, jobs_t, queues_t
from tunelab.trainer.v1 import trainer_pb2 as pb

_JSON_QUEUE = ("labels",)
_JSON_ATTEMPT = ("gpus", "env_vars")


def queue_of(row: Any) -> QueueRecord:
    m = dict(row._mapping)
    m["labels"] = json.loads(m["labels"])
    return QueueRecord(**m)


def _attempt(row: Any) -> AttemptRecord:
    m = dict(row._mapping)
    m["gpus"] = tuple(json.loads(m["gpus"]))
    m["env_vars"] = json.loads(m["env_vars"])
    return AttemptRecord(**m)


def _job(row: Any, attempts: tuple[AttemptRecord, ...] = ()) -> JobRecord:
    m = dict(row._mapping)
    m.pop("next_line", None)
    m["spec"] = pb.JobSpec.FromString(m["spec"])
    m["latest_metrics"] = pb.MetricsPoint.FromString(m["latest_metrics"]) if m["latest_metrics"] else None
    m["latest_eval"] = json.loads(m["latest_eval"])
    return JobRecord(**m, attempts=attempts)


def _job_values(changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(changes)
    if "spec" in out:
        out["spec"] = out["spec"].SerializeToString()
    if "latest_metrics" in out:
        point = out["latest_metrics"]
        out["latest_metrics"] = point.SerializeToString() if point is not None else None
    if "latest_eval" in out:
        out["latest_eval"] = json.dumps(out["latest_eval"])
    return out


def _missing_job(job_id: str) -> NotFound:
    return NotFound(f"job {job_id!r} does not exist (see `tunelab job ls`)")


def _read_attempts(db: Connection, job_id: str) -> tuple[AttemptRecord, ...]:
    rows = db.execute(select(attempts_t).where(attempts_t.c.job_id == job_id).order_by(attempts_t.c.number))
    return tuple(_attempt(r) for r in rows)


def _read_job(db: Connection, job_id: str) -> JobRecord:
    row = db.execute(select(jobs_t).where(jobs_t.c.id == job_id)).first()
    if row is None:
        raise _missing_job(job_id)
    return _job(row, _read_attempts(db, job_id))


def write_job(db: Connection, job_id: str, changes: dict[str, Any]) -> None:
    n = db.execute(
        update(jobs_t)
        .where(jobs_t.c.id == job_id)
        .values(**_job_values(changes), update_time=time.time(), revision=jobs_t.c.revision + 1)
    ).rowcount
    if not n:
        raise NotFound(f"job {job_id!r} does not exist")


def _attempt_values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v) if k in _JSON_ATTEMPT else v) for k, v in values.items()}


def write_attempt(db: Connection, rec: AttemptRecord) -> None:
    db.execute(insert(attempts_t).values(**_attempt_values(rec.__dict__)))


def _change_attempt(db: Connection, job_id: str, number: int, changes: dict[str, Any]) -> None:
    db.execute(
        update(attempts_t)
        .where(attempts_t.c.job_id == job_id, attempts_t.c.number == number)
        .values(**_attempt_values(changes))
    )


class JobTx:
    """A job whose row is locked (``Registry.locked``): its reads and writes commit together, and
    no other replica or thread changes the job meanwhile."""

    def __init__(self, db: Connection, job: JobRecord) -> None:
        self.db, self.job = db, job

    def update(self, **changes: Any) -> JobRecord:
        write_job(self.db, self.job.id, changes)
        self.job = _read_job(self.db, self.job.id)
        return self.job

    def update_attempt(self, number: int, **changes: Any) -> None:
        _change_attempt(self.db, self.job.id, number, changes)

    def delete(self) -> None:
        from tunelab.trainer.tables import log_lines_t, metrics_t, streams_t

        for table in (log_lines_t, metrics_t, streams_t, attempts_t):
            self.db.execute(delete(table).where(table.c.job_id == self.job.id))
        self.db.execute(delete(jobs_t).where(jobs_t.c.id == self.job.id))


class Registry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.changed = threading.Condition()

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def wait(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)

    # -- queues -----------------------------------------------------------------------------
    def create_queue(self, rec: QueueRecord) -> QueueRecord:
        values = {k: (json.dumps(v) if k in _JSON_QUEUE else v) for k, v in rec.__dict__.items()}
        try:
            with self.engine.begin() as db:
                db.execute(insert(queues_t).values(**values))
        except IntegrityError:
            raise AlreadyExists(f"queue {rec.id!r} exists already (see `tunelab queue ls`)") from None
        return rec

    def get_queue(self, queue_id: str) -> QueueRecord:
        with self.engine.connect() as db:
            row = db.execute(select(queues_t).where(queues_t.c.id == queue_id)).first()
        if row is None:
            raise NotFound(f"queue {queue_id!r} does not exist (see `tunelab queue ls`)")
        return queue_of(row)

    def list_queues(self) -> list[QueueRecord]:
        with self.engine.connect() as db:
            return [queue_of(r) for r in db.execute(select(queues_t).order_by(queues_t.c.id))]

    def update_queue(self, queue_id: str, **changes: Any) -> QueueRecord:
        values = {k: (json.dumps(v) if k in _JSON_QUEUE else v) for k, v in changes.items()}
        with self.engine.begin() as db:
            n = db.execute(
                update(queues_t).where(queues_t.c.id == queue_id).values(**values, update_time=time.time())
            ).rowcount
        if not n:
            raise NotFound(f"queue {queue_id!r} does not exist")
        self.notify()
        return self.get_queue(queue_id)

    def delete_queue(self, queue_id: str) -> None:
        with self.engine.begin() as db:
            n = db.execute(delete(queues_t).where(queues_t.c.id == queue_id)).rowcount
        if not n:
            raise NotFound(f"queue {queue_id!r} does not exist")

    # -- jobs -------------------------------------------------------------------------------
    def insert_job(self, rec: JobRecord) -> JobRecord:
        values = _job_values({k: v for k, v in rec.__dict__.items() if k != "attempts"})
        try:
            with self.engine.begin() as db:
                db.execute(insert(jobs_t).values(**values, next_line=1))
        except IntegrityError:
            raise AlreadyExists(
                f"job {rec.id!r} exists already: pick another --name, or `tunelab job restart {rec.id}`"
            ) from None
        self.notify()
        return rec

    def get_job(self, job_id: str) -> JobRecord:
        with self.engine.connect() as db:
            return _read_job(db, job_id)

    @contextmanager
    def locked(self, job_id: str) -> Iterator[JobTx]:
        """The job with its row locked until the block ends (then its changes commit). Nothing in
        the block may write to the database other than through the JobTx."""
        with serialized(self.engine) as db:
            row = db.execute(select(jobs_t.c.id).where(jobs_t.c.id == job_id).with_for_update()).first()
            if row is None:
                raise _missing_job(job_id)
            yield JobTx(db, _read_job(db, job_id))
        self.notify()

    def jobs(
        self, *, states: Iterable[str] = (), queue: str = "", with_attempts: bool = False
    ) -> list[JobRecord]:
        """Jobs newest first, optionally only those in ``states`` and ``queue``."""
        q = select(jobs_t).order_by(jobs_t.c.create_time.desc(), jobs_t.c.id)
        if states := list(states):
            q = q.where(jobs_t.c.state.in_(states))
        if queue:
            q = q.where(jobs_t.c.queue == queue)
        with self.engine.connect() as db:
            rows = db.execute(q).all()
            return [_job(r, _read_attempts(db, r.id) if with_attempts else ()) for r in rows]

    def queued_in_order(self) -> list[JobRecord]:
        """QUEUED jobs by priority (highest first), then submission time."""
        q = (
            select(jobs_t)
            .where(jobs_t.c.state == QUEUED)
            .order_by(jobs_t.c.priority.desc(), jobs_t.c.create_time, jobs_t.c.id)
        )
        with self.engine.connect() as db:
            return [_job(r) for r in db.execute(q)]

    def active_jobs(self) -> list[JobRecord]:
        """Jobs holding resources, with their attempts."""
        return self.jobs(states=ACTIVE, with_attempts=True)

    def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        """An unconditional change (progress, metrics); one that depends on the job's state goes
        through ``locked``."""
        with self.engine.begin() as db:
            write_job(db, job_id, changes)
        self.notify()
        return self.get_job(job_id)

    def count_by_state(self) -> dict[str, int]:
        with self.engine.connect() as db:
            rows = db.execute(select(jobs_t.c.state, func.count()).group_by(jobs_t.c.state))
            return {state: int(n) for state, n in rows}

    def count_in_queue(self, queue_id: str, states: Iterable[str]) -> int:
        with self.engine.connect() as db:
            q = select(func.count()).where(jobs_t.c.queue == queue_id, jobs_t.c.state.in_(list(states)))
            return int(db.execute(q).scalar() or 0)

    # -- attempts ---------------------------------------------------------------------------
    def insert_attempt(self, rec: AttemptRecord) -> AttemptRecord:
        with self.engine.begin() as db:
            write_attempt(db, rec)
        return rec

    def update_attempt(self, job_id: str, number: int, **changes: Any) -> None:
        with self.engine.begin() as db:
            _change_attempt(db, job_id, number, changes)

    def watch_job(
        self, job_id: str, active: Callable[[], bool] = lambda: True, poll_s: float = 1.0
    ) -> Iterator[JobRecord]:
        """Yields the job now and after every change, until it is terminal or ``active()`` turns
        false (checked at least every ``poll_s``: a watcher that went away frees its thread)."""
        last = -1
        while active():
            with self.changed:
                rec = self.get_job(job_id)
                if rec.revision == last:
                    self.changed.wait(poll_s)
                    continue
            last = rec.revision
            yield rec
            if rec.terminal:
                return
