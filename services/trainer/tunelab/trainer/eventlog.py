"""What agents report that is kept per line or point: log lines, metric points, and the highest
event sequence stored per worker (so a resent batch is stored once)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, and_, insert, select, update

from tunelab.common.state import serialized
from tunelab.trainer.tables import jobs_t, log_lines_t, metrics_t, streams_t
from tunelab.trainer.v1 import trainer_pb2 as pb


@dataclass(frozen=True)
class LogLine:
    line_number: int
    attempt: int
    worker: int
    stream: int
    time: float
    text: str


class EventLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- sequences --------------------------------------------------------------------------
    def last_sequence(self, job_id: str, attempt: int, worker: int) -> int:
        with self.engine.connect() as db:
            value = db.execute(
                select(streams_t.c.last_sequence).where(
                    streams_t.c.job_id == job_id, streams_t.c.attempt == attempt, streams_t.c.worker == worker
                )
            ).scalar()
        return int(value or 0)

    def set_sequence(self, job_id: str, attempt: int, worker: int, sequence: int) -> None:
        key = and_(streams_t.c.job_id == job_id, streams_t.c.attempt == attempt, streams_t.c.worker == worker)
        with self.engine.begin() as db:
            if not db.execute(update(streams_t).where(key).values(last_sequence=sequence)).rowcount:
                db.execute(
                    insert(streams_t).values(
                        job_id=job_id, attempt=attempt, worker=worker, last_sequence=sequence
                    )
                )

    # -- logs -------------------------------------------------------------------------------
    def append_logs(self, job_id: str, lines: list[LogLine]) -> None:
        """Stores ``lines`` with the job's next line numbers (their own numbers are ignored)."""
        if not lines:
            return
        with serialized(self.engine) as db:  # the job's row locked: replicas number lines in turn
            first = db.execute(
                select(jobs_t.c.next_line).where(jobs_t.c.id == job_id).with_for_update()
            ).scalar()
            if first is None:
                return
            db.execute(update(jobs_t).where(jobs_t.c.id == job_id).values(next_line=first + len(lines)))
            db.execute(
                insert(log_lines_t),
                [
                    {
                        "job_id": job_id,
                        "line_number": first + i,
                        "attempt": ln.attempt,
                        "worker": ln.worker,
                        "stream": ln.stream,
                        "time": ln.time,
                        "text": ln.text,
                    }
                    for i, ln in enumerate(lines)
                ],
            )

    def read_logs(
        self,
        job_id: str,
        after_line: int,
        limit: int,
        attempt: int | None = None,
        worker: int | None = None,
    ) -> list[LogLine]:
        q = select(log_lines_t).where(log_lines_t.c.job_id == job_id, log_lines_t.c.line_number > after_line)
        if attempt is not None:
            q = q.where(log_lines_t.c.attempt == attempt)
        if worker is not None:
            q = q.where(log_lines_t.c.worker == worker)
        q = q.order_by(log_lines_t.c.line_number).limit(limit)
        with self.engine.connect() as db:
            return [_line(r) for r in db.execute(q)]

    def tail_start(self, job_id: str, tail: int, attempt: int | None, worker: int | None) -> int:
        """The line number after which the last ``tail`` (matching) lines begin."""
        q = select(log_lines_t.c.line_number).where(log_lines_t.c.job_id == job_id)
        if attempt is not None:
            q = q.where(log_lines_t.c.attempt == attempt)
        if worker is not None:
            q = q.where(log_lines_t.c.worker == worker)
        q = q.order_by(log_lines_t.c.line_number.desc()).offset(tail - 1).limit(1)
        with self.engine.connect() as db:
            first = db.execute(q).scalar()
        return int(first) - 1 if first is not None else 0

    def last_texts(self, job_id: str, attempt: int, stream: int, limit: int) -> list[str]:
        """The last ``limit`` lines an attempt logged on ``stream``, oldest first."""
        q = (
            select(log_lines_t.c.text)
            .where(
                log_lines_t.c.job_id == job_id,
                log_lines_t.c.attempt == attempt,
                log_lines_t.c.stream == stream,
            )
            .order_by(log_lines_t.c.line_number.desc())
            .limit(limit)
        )
        with self.engine.connect() as db:
            return [str(r.text) for r in db.execute(q)][::-1]

    # -- metrics ----------------------------------------------------------------------------
    def add_metrics(self, job_id: str, points: list[pb.MetricsPoint]) -> None:
        if not points:
            return
        with self.engine.begin() as db:
            db.execute(
                insert(metrics_t),
                [
                    {
                        "job_id": job_id,
                        "attempt": p.attempt,
                        "step": p.step,
                        "has_eval": 1 if p.eval_scores else 0,
                        "point": p.SerializeToString(),
                    }
                    for p in points
                ],
            )

    def list_metrics(
        self,
        job_id: str,
        after_id: int,
        limit: int,
        attempt: int | None = None,
        after_step: int = 0,
        eval_only: bool = False,
    ) -> list[tuple[int, pb.MetricsPoint]]:
        q = select(metrics_t.c.id, metrics_t.c.point).where(
            metrics_t.c.job_id == job_id, metrics_t.c.id > after_id
        )
        if attempt is not None:
            q = q.where(metrics_t.c.attempt == attempt)
        if after_step:
            q = q.where(metrics_t.c.step > after_step)
        if eval_only:
            q = q.where(metrics_t.c.has_eval == 1)
        with self.engine.connect() as db:
            rows = db.execute(q.order_by(metrics_t.c.id).limit(limit)).all()
        return [(int(r.id), pb.MetricsPoint.FromString(r.point)) for r in rows]


def _line(row: object) -> LogLine:
    m = row._mapping  # type: ignore[attr-defined]
    return LogLine(m["line_number"], m["attempt"], m["worker"], m["stream"], m["time"], m["text"])
