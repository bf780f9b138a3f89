"""TrainerClient: the trainer service as Python calls (jobs, queues, capacity, the agent's side)."""

from __future__ import annotations

import builtins
from collections.abc import Iterator

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from tunelab.trainer.v1 import trainer_pb2 as pb
from tunelab.trainer.v1 import trainer_pb2_grpc


def job_name(name: str) -> str:
    return name if name.startswith("jobs/") else f"jobs/{name}"


def queue_name(name: str) -> str:
    return name if name.startswith("queues/") else f"queues/{name}"


def seconds(value: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


class TrainerClient:
    def __init__(self, channel: grpc.Channel, *, address: str = "") -> None:
        self.stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        self.address = address

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, spec: pb.JobSpec, job_id: str = "", validate_only: bool = False) -> pb.Job:
        req = pb.CreateJobRequest(job_id=job_id, job=pb.Job(spec=spec), validate_only=validate_only)
        return self.stub.CreateJob(req).job

    def get(self, name: str) -> pb.Job:
        return self.stub.GetJob(pb.GetJobRequest(name=job_name(name))).job

    def list(
        self,
        queue: str = "",
        states: builtins.list[int] | None = None,
        labels: dict[str, str] | None = None,
    ) -> Iterator[pb.Job]:
        token = ""
        while True:
            req = pb.ListJobsRequest(
                page_token=token,
                queue=queue_name(queue) if queue else "",
                states=states or [],  # type: ignore[arg-type]
                labels=labels or {},
            )
            resp = self.stub.ListJobs(req)
            yield from resp.jobs
            token = resp.next_page_token
            if not token:
                return

    def cancel(self, name: str, grace_s: float | None = None) -> pb.Job:
        req = pb.CancelJobRequest(name=job_name(name))
        if grace_s is not None:
            req.grace_period.CopyFrom(seconds(grace_s))
        return self.stub.CancelJob(req).job

    def restart(self, name: str) -> pb.Job:
        return self.stub.RestartJob(pb.RestartJobRequest(name=job_name(name))).job

    def delete(self, name: str, force: bool = False) -> None:
        self.stub.DeleteJob(pb.DeleteJobRequest(name=job_name(name), force=force))

    def watch(self, name: str, timeout: float | None = None) -> Iterator[pb.Job]:
        for resp in self.stub.WatchJob(pb.WatchJobRequest(name=job_name(name)), timeout=timeout):
            yield resp.job

    def wait(self, name: str, timeout: float | None = None) -> pb.Job:
        """Blocks until the job is SUCCEEDED, FAILED or CANCELLED; returns it."""
        last = self.get(name)
        for last in self.watch(name, timeout=timeout):  # noqa: B007 - the last update is the answer
            pass
        return last

    def logs(
        self,
        name: str,
        follow: bool = False,
        after_line: int = 0,
        tail: int = 0,
        attempt: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[pb.LogLine]:
        req = pb.StreamJobLogsRequest(name=job_name(name), follow=follow, after_line=after_line, tail=tail)
        if attempt is not None:
            req.attempt = attempt
        for resp in self.stub.StreamJobLogs(req, timeout=timeout):
            yield from resp.lines

    def metrics(
        self, name: str, attempt: int | None = None, after_step: int = 0, eval_only: bool = False
    ) -> Iterator[pb.MetricsPoint]:
        token = ""
        while True:
            req = pb.ListJobMetricsRequest(
                parent=job_name(name), page_token=token, after_step=after_step, eval_only=eval_only
            )
            if attempt is not None:
                req.attempt = attempt
            resp = self.stub.ListJobMetrics(req)
            yield from resp.points
            token = resp.next_page_token
            if not token:
                return

    # -- queues -----------------------------------------------------------------------------
    def create_queue(self, queue_id: str, queue: pb.Queue) -> pb.Queue:
        return self.stub.CreateQueue(pb.CreateQueueRequest(queue_id=queue_id, queue=queue)).queue

    def get_queue(self, name: str) -> pb.Queue:
        return self.stub.GetQueue(pb.GetQueueRequest(name=queue_name(name))).queue

    def list_queues(self) -> builtins.list[pb.Queue]:
        return builtins.list(self.stub.ListQueues(pb.ListQueuesRequest()).queues)

    def update_queue(self, queue: pb.Queue, fields: builtins.list[str]) -> pb.Queue:
        req = pb.UpdateQueueRequest(queue=queue, update_mask=FieldMask(paths=fields))
        return self.stub.UpdateQueue(req).queue

    def delete_queue(self, name: str) -> None:
        self.stub.DeleteQueue(pb.DeleteQueueRequest(name=queue_name(name)))

    def capacity(self) -> pb.Capacity:
        return self.stub.GetCapacity(pb.GetCapacityRequest()).capacity

    # -- the agent's side ---------------------------------------------------------------------
    def assignment(self, name: str, attempt: int, worker: int) -> pb.JobAssignment:
        req = pb.GetJobAssignmentRequest(name=job_name(name), attempt=attempt, worker_index=worker)
        return self.stub.GetJobAssignment(req, timeout=30).assignment

    def report(
        self, name: str, attempt: int, worker: int, events: builtins.list[pb.JobEvent], timeout: float = 30
    ) -> pb.ReportJobEventsResponse:
        req = pb.ReportJobEventsRequest(
            name=job_name(name), attempt=attempt, worker_index=worker, events=events
        )
        return self.stub.ReportJobEvents(req, timeout=timeout)
