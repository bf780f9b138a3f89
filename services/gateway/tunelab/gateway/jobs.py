"""The trainer's job API as the gateway uses it for workload replicas: create, read, find by label,
cancel, delete, and the tail of a job's log. gRPC errors become the domain's typed errors here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from tunelab.common.errors import NotFound, TunelabError, Unavailable
from tunelab.common.grpc.channel import open_channel
from tunelab.common.grpc.interceptors import STATUS_OF
from tunelab.trainer.v1 import trainer_pb2 as pb
from tunelab.trainer.v1 import trainer_pb2_grpc

T = TypeVar("T")
ERROR_OF = {code: cls for cls, code in STATUS_OF.items()}
TERMINAL = (pb.Job.STATE_SUCCEEDED, pb.Job.STATE_FAILED, pb.Job.STATE_CANCELLED)


def state_name(job: pb.Job) -> str:
    return str(pb.Job.State.Name(job.state)).removeprefix("STATE_")  # type: ignore[arg-type]


class TrainerJobs:
    def __init__(self, address: str, token: str, timeout_s: float = 30.0) -> None:
        self.address = address
        self.token = token
        self.timeout_s = timeout_s
        self._channel: grpc.Channel | None = None

    def _stub(self) -> trainer_pb2_grpc.TrainerServiceStub:
        if self._channel is None:
            self._channel = open_channel(self.address, self.token)
        return trainer_pb2_grpc.TrainerServiceStub(self._channel)

    def _call(self, what: str, fn: Callable[[trainer_pb2_grpc.TrainerServiceStub], T]) -> T:
        try:
            return fn(self._stub())
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise Unavailable(
                    f"cannot {what} on the trainer at {self.address}: {details} (set TUNELAB_TRAINER_ADDR)"
                ) from None
            raise ERROR_OF.get(code, TunelabError)(f"trainer: cannot {what}: {details}") from None

    def create(self, job_id: str, spec: pb.JobSpec) -> pb.Job:
        req = pb.CreateJobRequest(job_id=job_id, job=pb.Job(spec=spec))
        return self._call(f"submit job {job_id}", lambda s: s.CreateJob(req, timeout=self.timeout_s).job)

    def get(self, name: str) -> pb.Job:
        req = pb.GetJobRequest(name=name)
        return self._call(f"read {name}", lambda s: s.GetJob(req, timeout=self.timeout_s).job)

    def find(self, name: str) -> pb.Job | None:
        try:
            return self.get(name)
        except NotFound:
            return None

    def labelled(self, labels: dict[str, str]) -> list[pb.Job]:
        """Every job carrying all of ``labels``."""
        jobs: list[pb.Job] = []
        token = ""
        while True:
            req = pb.ListJobsRequest(labels=labels, page_token=token, page_size=1000)
            resp = self._call("list jobs", lambda s: s.ListJobs(req, timeout=self.timeout_s))  # noqa: B023
            jobs.extend(resp.jobs)
            token = resp.next_page_token
            if not token:
                return jobs

    def cancel(self, name: str) -> pb.Job:
        req = pb.CancelJobRequest(name=name)
        return self._call(f"cancel {name}", lambda s: s.CancelJob(req, timeout=self.timeout_s).job)

    def delete(self, name: str) -> None:
        """Deletes the job, cancelling it first if it still runs; a job already gone is no error."""
        req = pb.DeleteJobRequest(name=name, force=True)
        try:
            self._call(f"delete {name}", lambda s: s.DeleteJob(req, timeout=self.timeout_s))
        except NotFound:
            pass

    def log_tail(self, name: str, lines: int = 40) -> list[str]:
        """The last lines the job's command wrote (stdout and stderr, not the agent's), oldest first."""
        req = pb.StreamJobLogsRequest(name=name, tail=lines)
        agent = pb.LogLine.STREAM_AGENT

        def read(s: trainer_pb2_grpc.TrainerServiceStub) -> list[str]:
            batches = s.StreamJobLogs(req, timeout=self.timeout_s)
            return [line.text for batch in batches for line in batch.lines if line.stream != agent]

        return self._call(f"read the log of {name}", read)[-lines:]

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
