"""The agent's side of the trainer: what an attempt's worker runs (its assignment), and the
events its agent reports (phases, log lines, metrics, output commits, the exit)."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from google.protobuf.duration_pb2 import Duration

from tunelab.common.errors import FailedPrecondition, NotFound
from tunelab.trainer.eventlog import EventLog, LogLine
from tunelab.trainer.lifecycle import Exit, Lifecycle
from tunelab.trainer.metrics import TrainerMetrics
from tunelab.trainer.records import CANCELLING, RUNNING, STARTING, JobRecord, is_server
from tunelab.trainer.registry import Registry
from tunelab.trainer.v1 import trainer_pb2 as pb

PORT_VAR = re.compile(r"\$\{PORT\}|\$PORT(?![A-Za-z0-9_])")
STDERR_TAIL = 20  # lines, as many as the agent puts in the message of a non-zero exit


def with_port(arg: str, port: str) -> str:
    """``arg`` with "$PORT" and "${PORT}" replaced by ``port``: a server's argv names the port it
    listens on so, and no shell expands them in an argv ($PORT is in its environment too)."""
    return PORT_VAR.sub(port, arg)


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


@dataclass(frozen=True)
class Intervals:
    report_s: float = 2.0
    output_commit_s: float = 600.0


@dataclass
class Ack:
    sequence: int = 0
    cancel_requested: bool = False
    grace_s: float = 0.0
    superseded: bool = False


@dataclass
class _Batch:
    lines: list[LogLine] = field(default_factory=list)
    points: list[pb.MetricsPoint] = field(default_factory=list)
    phases: list[pb.PhaseEvent] = field(default_factory=list)
    commits: list[pb.OutputCommitEvent] = field(default_factory=list)
    exit: pb.ExitEvent | None = None


class AgentApi:
    def __init__(
        self,
        registry: Registry,
        events: EventLog,
        lifecycle: Lifecycle,
        metrics: TrainerMetrics,
        intervals: Intervals,
    ) -> None:
        self.registry, self.events, self.lifecycle, self.metrics = registry, events, lifecycle, metrics
        self.intervals = intervals
        self._ingest = threading.Lock()

    def assignment(self, job_id: str, attempt: int, worker: int) -> pb.JobAssignment:
        job = self.registry.get_job(job_id)
        att = job.current
        if att is None or att.number != attempt or att.end_time is not None:
            raise FailedPrecondition(
                f"attempt {attempt} of jobs/{job_id} is not current; the agent must exit"
            )
        if not 0 <= worker < att.worker_count:
            raise FailedPrecondition(f"jobs/{job_id} attempt {attempt} has no worker {worker}")
        spec = pb.JobSpec()
        spec.CopyFrom(job.spec)
        for m in spec.datasets:  # outputs start from what the job committed last
            if m.mode == pb.DatasetMount.MODE_OUTPUT and m.committed_version:
                m.resolved_version = m.committed_version
        if is_server(spec) and (port := att.env_vars.get("PORT")):
            argv = [with_port(arg, port) for arg in spec.command]
            del spec.command[:]
            spec.command.extend(argv)
        commit_s = (
            spec.output_commit_interval.ToTimedelta().total_seconds()
            if spec.HasField("output_commit_interval")
            else self.intervals.output_commit_s
        )
        return pb.JobAssignment(
            job=job.name,
            attempt=attempt,
            worker_index=worker,
            worker_count=att.worker_count,
            spec=spec,
            environment_env_key=att.env_key,
            assigned_gpus=list(att.gpus),
            env_vars={**att.env_vars, "TUNELAB_WORKER": str(worker)},
            report_interval=duration(self.intervals.report_s),
            output_commit_interval=duration(commit_s),
            cancel_grace_period=duration(self.lifecycle.grace_of(job)),
        )

    def report(self, job_id: str, attempt: int, worker: int, events: list[pb.JobEvent]) -> Ack:
        with self._ingest:
            try:
                job = self.registry.get_job(job_id)
            except NotFound:
                return Ack(superseded=True)
            att = job.current
            if att is None or att.number != attempt or att.end_time is not None:
                return Ack(self.events.last_sequence(job_id, attempt, worker), superseded=True)
            last = self.events.last_sequence(job_id, attempt, worker)
            fresh = sorted((e for e in events if e.sequence > last), key=lambda e: e.sequence)
            batch = self._split(fresh, attempt, worker)
            self.events.append_logs(job_id, batch.lines)
            self.events.add_metrics(job_id, batch.points)
            self._apply(job, batch)
            self.registry.update_attempt(job_id, attempt, last_report_time=time.time())
            if fresh:
                last = fresh[-1].sequence
                self.events.set_sequence(job_id, attempt, worker, last)
                self.registry.notify()
            if batch.exit is not None:
                e = batch.exit
                code = e.exit_code if e.HasField("exit_code") else None
                ended = Exit(e.reason, e.message, code, e.signal)
                if ended.succeeded and is_server(job.spec):  # the agent says nothing more of those
                    ended = Exit(e.reason, self._exit_0(job_id, attempt), code, e.signal)
                # Worker 0 commits the outputs and its exit ends the attempt; another worker's
                # success only means its share is done, but any worker's failure ends it at once.
                if worker == 0 or not ended.succeeded:
                    self.lifecycle.end_attempt(job_id, attempt, ended)
            job = self.registry.get_job(job_id)
            cancelling = job.state == CANCELLING and job.attempt == attempt
            return Ack(last, cancelling, self.lifecycle.grace_of(job), job.attempt != attempt)

    def _exit_0(self, job_id: str, attempt: int) -> str:
        tail = "\n".join(self.events.last_texts(job_id, attempt, pb.LogLine.STREAM_STDERR, STDERR_TAIL))
        return "exit status 0" + (f"; last lines of stderr:\n{tail}" if tail else "")

    def _split(self, events: list[pb.JobEvent], attempt: int, worker: int) -> _Batch:
        batch = _Batch()
        for e in events:
            kind = e.WhichOneof("event")
            if kind:
                self.metrics.agent_events.labels(kind).inc()
            when = e.time.ToNanoseconds() / 1e9 if e.HasField("time") else time.time()
            if kind == "log_line":
                ln = e.log_line
                batch.lines.append(LogLine(0, attempt, worker, ln.stream, when, ln.text))
            elif kind == "metrics":
                point = pb.MetricsPoint()
                point.CopyFrom(e.metrics)
                point.attempt = attempt
                if not point.HasField("time"):
                    point.time.FromNanoseconds(int(when * 1e9))
                batch.points.append(point)
            elif kind == "phase":
                batch.phases.append(e.phase)
            elif kind == "output_commit":
                batch.commits.append(e.output_commit)
            elif kind == "exit":
                batch.exit = e.exit
        return batch

    def _apply(self, job: JobRecord, batch: _Batch) -> None:
        changes: dict[str, object] = {}
        if batch.phases:
            last = batch.phases[-1]
            changes["phase"] = last.phase
            if job.state != CANCELLING and last.state in (pb.Job.STATE_STARTING, pb.Job.STATE_RUNNING):
                changes["state"] = RUNNING if last.state == pb.Job.STATE_RUNNING else STARTING
        train = [p for p in batch.points if p.HasField("loss") or not p.eval_scores]
        if train:
            changes["latest_metrics"] = train[-1]
        evals = [p for p in batch.points if p.eval_scores]
        if evals:
            latest = dict(job.latest_eval)
            for p in evals:
                latest.update(p.eval_scores)
            changes["latest_eval"] = latest
        if batch.commits:
            spec = pb.JobSpec()
            spec.CopyFrom(job.spec)
            for c in batch.commits:
                for m in spec.datasets:
                    if m.path == c.path:
                        m.committed_version = c.version
                        m.commit_time.GetCurrentTime()
            changes["spec"] = spec
        if changes:
            with self.registry.locked(job.id) as tx:
                if "state" in changes and tx.job.state not in (STARTING, RUNNING):
                    del changes["state"]  # cancelled meanwhile
                tx.update(**changes)
                if "state" in changes and job.attempt:
                    tx.update_attempt(job.attempt, state=changes["state"])
