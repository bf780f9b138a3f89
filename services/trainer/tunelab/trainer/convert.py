"""Conversions between the trainer's records and its protobuf messages."""

from __future__ import annotations

from tunelab.common.protoconv import timestamp
from tunelab.trainer.eventlog import LogLine
from tunelab.trainer.gpus import GpuInfo
from tunelab.trainer.records import RUNNING, STATES, AttemptRecord, JobRecord, QueueRecord
from tunelab.trainer.scheduler import QueueUsage
from tunelab.trainer.v1 import trainer_pb2 as pb

JOB_STATE = {name: getattr(pb.Job.State, f"STATE_{name}") for name in STATES}
STATE_OF = {v: k for k, v in JOB_STATE.items()}
QUEUE_STATE = {"OPEN": pb.Queue.STATE_OPEN, "PAUSED": pb.Queue.STATE_PAUSED}


def attempt_to_pb(a: AttemptRecord) -> pb.JobAttempt:
    msg = pb.JobAttempt(
        attempt=a.number,
        state=JOB_STATE[a.state],
        reason=a.reason,
        message=a.message,
        assigned_gpus=list(a.gpus),
        node=a.node,
        start_time=timestamp(a.start_time),
        end_time=timestamp(a.end_time),
    )
    if a.exit_code is not None:
        msg.exit_code = a.exit_code
    return msg


def job_to_pb(rec: JobRecord, executor: str, position: int = 0) -> pb.Job:
    current = rec.current
    msg = pb.Job(
        name=rec.name,
        spec=rec.spec,
        state=JOB_STATE[rec.state],
        phase=rec.phase,
        reason=rec.reason,
        message=rec.message,
        attempt=rec.attempt,
        executor=executor,
        queue_position=position,
        latest_eval_scores=rec.latest_eval,
        attempts=[attempt_to_pb(a) for a in rec.attempts],
        create_time=timestamp(rec.create_time),
        start_time=timestamp(rec.start_time),
        end_time=timestamp(rec.end_time),
        update_time=timestamp(rec.update_time),
    )
    if rec.exit_code is not None:
        msg.exit_code = rec.exit_code
    if current is not None and current.end_time is None:
        msg.assigned_gpus.extend(current.gpus)
        msg.executor_ref = current.executor_ref
        msg.node = current.node
        if rec.state == RUNNING:  # while the command runs (a server may not listen yet)
            msg.endpoint = current.endpoint
    if rec.latest_metrics is not None:
        msg.latest_metrics.CopyFrom(rec.latest_metrics)
    return msg


def queue_to_pb(rec: QueueRecord, usage: QueueUsage | None = None) -> pb.Queue:
    u = usage or QueueUsage()
    msg = pb.Queue(
        name=f"queues/{rec.id}",
        description=rec.description,
        labels=rec.labels,
        state=QUEUE_STATE.get(rec.state, pb.Queue.STATE_OPEN),
        usage=pb.QueueUsage(
            gpus_in_use=u.demand.gpus,
            cpu_millis_in_use=u.demand.cpu_millis,
            memory_bytes_in_use=u.demand.memory_bytes,
            running_jobs=u.running,
            queued_jobs=u.queued,
        ),
        create_time=timestamp(rec.create_time),
        update_time=timestamp(rec.update_time),
    )
    for field in ("gpu_quota", "max_concurrent_jobs", "cpu_quota_millis", "memory_quota_bytes"):
        value = getattr(rec, field)
        if value is not None:
            setattr(msg, field, value)
    return msg


def queue_from_pb(msg: pb.Queue) -> QueueRecord:
    return QueueRecord(
        id=msg.name.removeprefix("queues/"),
        create_time=0.0,
        update_time=0.0,
        description=msg.description,
        labels=dict(msg.labels),
        state="PAUSED" if msg.state == pb.Queue.STATE_PAUSED else "OPEN",
        gpu_quota=msg.gpu_quota if msg.HasField("gpu_quota") else None,
        max_concurrent_jobs=msg.max_concurrent_jobs if msg.HasField("max_concurrent_jobs") else None,
        cpu_quota_millis=msg.cpu_quota_millis if msg.HasField("cpu_quota_millis") else None,
        memory_quota_bytes=msg.memory_quota_bytes if msg.HasField("memory_quota_bytes") else None,
    )


def log_line_to_pb(ln: LogLine) -> pb.LogLine:
    return pb.LogLine(
        line_number=ln.line_number,
        time=timestamp(ln.time),
        attempt=ln.attempt,
        worker_index=ln.worker,
        stream=ln.stream,  # type: ignore[arg-type]
        text=ln.text,
    )


def capacity_to_pb(
    executor: str, gpus: list[GpuInfo], owners: dict[str, str], cpu_millis: int, memory_bytes: int
) -> pb.Capacity:
    return pb.Capacity(
        executor=executor,
        gpus=[
            pb.Gpu(
                index=g.index,
                uuid=g.uuid,
                model=g.model,
                memory_bytes=g.memory_bytes,
                job=owners.get(str(g.index), ""),
            )
            for g in gpus
        ],
        total_gpus=len(gpus),
        free_gpus=sum(1 for g in gpus if str(g.index) not in owners),
        cpu_millis=cpu_millis,
        memory_bytes=memory_bytes,
    )
