"""The TrainerService gRPC servicer: proto in, domain call, proto out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeAlias

import grpc

from tunelab.common.names import parse_name
from tunelab.trainer import convert
from tunelab.trainer.agentapi import duration
from tunelab.trainer.jobs import JobFilter
from tunelab.trainer.records import JobRecord
from tunelab.trainer.service import Trainer
from tunelab.trainer.v1 import trainer_pb2 as pb
from tunelab.trainer.v1 import trainer_pb2_grpc

Ctx: TypeAlias = grpc.ServicerContext


def _id(name: str, what: str = "name") -> str:
    return parse_name(name, "jobs", what)


def _opt(msg: object, field: str) -> int | None:
    return getattr(msg, field) if msg.HasField(field) else None  # type: ignore[attr-defined]


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer

    def _job(self, rec: JobRecord) -> pb.Job:
        return convert.job_to_pb(rec, self.t.executor.name, self.t.jobs.queue_positions().get(rec.id, 0))

    # -- jobs -------------------------------------------------------------------------------
    def CreateJob(self, request: pb.CreateJobRequest, context: Ctx) -> pb.CreateJobResponse:
        rec = self.t.jobs.create(request.job_id, request.job.spec, request.validate_only)
        return pb.CreateJobResponse(job=self._job(rec))

    def GetJob(self, request: pb.GetJobRequest, context: Ctx) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=self._job(self.t.jobs.get(_id(request.name))))

    def ListJobs(self, request: pb.ListJobsRequest, context: Ctx) -> pb.ListJobsResponse:
        queue = parse_name(request.queue, "queues", "queue") if request.queue else ""
        states = tuple(convert.STATE_OF[s] for s in request.states if s in convert.STATE_OF)
        f = JobFilter(queue, states, tuple(sorted(request.labels.items())))
        jobs, token = self.t.jobs.list_jobs(f, request.page_token, request.page_size)
        positions = self.t.jobs.queue_positions()
        items = [convert.job_to_pb(j, self.t.executor.name, positions.get(j.id, 0)) for j in jobs]
        return pb.ListJobsResponse(jobs=items, next_page_token=token)

    def DeleteJob(self, request: pb.DeleteJobRequest, context: Ctx) -> pb.DeleteJobResponse:
        self.t.jobs.delete(_id(request.name), request.force)
        return pb.DeleteJobResponse()

    def CancelJob(self, request: pb.CancelJobRequest, context: Ctx) -> pb.CancelJobResponse:
        grace = (
            request.grace_period.ToTimedelta().total_seconds() if request.HasField("grace_period") else None
        )
        return pb.CancelJobResponse(job=self._job(self.t.jobs.cancel(_id(request.name), grace)))

    def RestartJob(self, request: pb.RestartJobRequest, context: Ctx) -> pb.RestartJobResponse:
        return pb.RestartJobResponse(job=self._job(self.t.jobs.restart(_id(request.name))))

    def WatchJob(self, request: pb.WatchJobRequest, context: Ctx) -> Iterator[pb.WatchJobResponse]:
        for rec in self.t.jobs.watch(_id(request.name), context.is_active):
            yield pb.WatchJobResponse(job=self._job(rec))

    def StreamJobLogs(
        self, request: pb.StreamJobLogsRequest, context: Ctx
    ) -> Iterator[pb.StreamJobLogsResponse]:
        r = request
        batches = self.t.jobs.logs(
            _id(r.name),
            r.follow,
            r.after_line,
            r.tail,
            _opt(r, "attempt"),
            _opt(r, "worker_index"),
            context.is_active,
        )
        for batch in batches:
            yield pb.StreamJobLogsResponse(lines=[convert.log_line_to_pb(ln) for ln in batch])

    def ListJobMetrics(self, request: pb.ListJobMetricsRequest, context: Ctx) -> pb.ListJobMetricsResponse:
        r = request
        points, token = self.t.jobs.metrics(
            _id(r.parent, "parent"), r.page_token, r.page_size, _opt(r, "attempt"), r.after_step, r.eval_only
        )
        return pb.ListJobMetricsResponse(points=points, next_page_token=token)

    # -- queues -----------------------------------------------------------------------------
    def CreateQueue(self, request: pb.CreateQueueRequest, context: Ctx) -> pb.CreateQueueResponse:
        rec = self.t.queues.create(request.queue_id, convert.queue_from_pb(request.queue))
        return pb.CreateQueueResponse(queue=convert.queue_to_pb(rec))

    def GetQueue(self, request: pb.GetQueueRequest, context: Ctx) -> pb.GetQueueResponse:
        rec = self.t.queues.get(parse_name(request.name, "queues", "name"))
        return pb.GetQueueResponse(queue=convert.queue_to_pb(rec, self.t.queues.usage().get(rec.id)))

    def ListQueues(self, request: pb.ListQueuesRequest, context: Ctx) -> pb.ListQueuesResponse:
        usage = self.t.queues.usage()
        queues = [convert.queue_to_pb(q, usage.get(q.id)) for q in self.t.queues.list_queues()]
        return pb.ListQueuesResponse(queues=queues)

    def UpdateQueue(self, request: pb.UpdateQueueRequest, context: Ctx) -> pb.UpdateQueueResponse:
        queue_id = parse_name(request.queue.name, "queues", "queue.name")
        rec = self.t.queues.update(
            queue_id, convert.queue_from_pb(request.queue), list(request.update_mask.paths)
        )
        return pb.UpdateQueueResponse(queue=convert.queue_to_pb(rec, self.t.queues.usage().get(rec.id)))

    def DeleteQueue(self, request: pb.DeleteQueueRequest, context: Ctx) -> pb.DeleteQueueResponse:
        self.t.queues.delete(parse_name(request.name, "queues", "name"))
        return pb.DeleteQueueResponse()

    def GetCapacity(self, request: pb.GetCapacityRequest, context: Ctx) -> pb.GetCapacityResponse:
        return pb.GetCapacityResponse(capacity=self.t.capacity())

    # -- the agent's side ---------------------------------------------------------------------
    def GetJobAssignment(
        self, request: pb.GetJobAssignmentRequest, context: Ctx
    ) -> pb.GetJobAssignmentResponse:
        a = self.t.agents.assignment(_id(request.name), request.attempt, request.worker_index)
        return pb.GetJobAssignmentResponse(assignment=a)

    def ReportJobEvents(self, request: pb.ReportJobEventsRequest, context: Ctx) -> pb.ReportJobEventsResponse:
        r = request
        ack = self.t.agents.report(_id(r.name), r.attempt, r.worker_index, list(r.events))
        return pb.ReportJobEventsResponse(
            acknowledged_sequence=ack.sequence,
            cancel_requested=ack.cancel_requested,
            cancel_grace_period=duration(ack.grace_s),
            attempt_superseded=ack.superseded,
        )
