"""Helpers shared by the trainer tests."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import pytest

from support import free_port, wait_serving  # noqa: F401 - re-exported for the trainer tests
from tunelab.trainer.v1 import trainer_pb2 as pb

QUEUED, STARTING, RUNNING = pb.Job.STATE_QUEUED, pb.Job.STATE_STARTING, pb.Job.STATE_RUNNING
SUCCEEDED, FAILED = pb.Job.STATE_SUCCEEDED, pb.Job.STATE_FAILED
CANCELLING, CANCELLED = pb.Job.STATE_CANCELLING, pb.Job.STATE_CANCELLED
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)


def py(code: str) -> list[str]:
    """A command running ``code`` with the test's Python (the agent's Python is the same)."""
    return ["python", "-c", code]


def spec(command: list[str], **fields: Any) -> pb.JobSpec:
    fields.setdefault("env_vars", {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return pb.JobSpec(command=command, **fields)


def state_name(value: int) -> str:
    return str(pb.Job.State.Name(value)).removeprefix("STATE_")  # type: ignore[arg-type]


def wait_for(client: Any, name: str, states: Iterable[int] = TERMINAL, timeout: float = 60) -> pb.Job:
    """Polls the job until it is in one of ``states``."""
    wanted = set(states)
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(name)
        if job.state in wanted:
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"{name} is {state_name(job.state)} ({job.reason}: {job.message}) after {timeout}s")
        time.sleep(0.1)


def wait_until(condition: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not met within {timeout}s")
        time.sleep(0.1)


def rpc_error(fn: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()  # type: ignore[attr-defined]


def log_text(client: Any, name: str) -> str:
    return "\n".join(line.text for line in client.logs(name))


PYTHON = sys.executable
