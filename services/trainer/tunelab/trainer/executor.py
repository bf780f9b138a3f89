"""Where attempts run. An executor starts the job agent (`tunelab agent`) for each worker of an
attempt and can tell whether it still runs, ask it to stop, and kill it. The scheduler decides
what runs and on which GPUs; the executor only knows how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from tunelab.trainer.gpus import GpuInfo


@dataclass(frozen=True)
class Placement:
    """How an attempt is laid out: its workers and what the trainer tells each agent."""

    worker_count: int
    node: str
    env_vars: dict[str, str] = field(default_factory=dict)
    # A server workload's base URL (where the executor makes it listen, e.g. http://127.0.0.1:41237);
    # empty for a batch job. The port is also in env_vars as PORT.
    endpoint: str = ""


@dataclass(frozen=True)
class AttemptStatus:
    """What the executor sees of an attempt: more than ``alive`` where it knows more (a cluster)."""

    alive: bool
    # Alive, but its agents have not started yet (queued by the cluster, pulling the image): why.
    # No agent can report meanwhile, so the heartbeat timeout does not run.
    pending: str = ""
    # Not alive: why it ended, where the executor knows (one CamelCase word), and the details.
    # Alive or not: "OOMKilled" where the kernel killed part of it at its memory limit.
    reason: str = ""
    message: str = ""


class Executor(Protocol):
    name: str  # "local" or "kubernetes"

    def gpus(self) -> list[GpuInfo]:
        """Every GPU the executor schedules (empty where it cannot list them)."""
        ...

    def cpu_millis(self) -> int: ...

    def memory_bytes(self) -> int: ...

    def place(
        self, job_id: str, attempt: int, workers: int, gpus: list[str], server_port: int | None = None
    ) -> Placement:
        """Lays out an attempt on the GPUs the scheduler assigned (no side effects). A server
        workload passes ``server_port``: the port it asked for, 0 for one the executor picks."""
        ...

    def start(self, job_id: str, attempt: int, placement: Placement) -> str:
        """Starts the attempt's agents; returns what the executor knows them by (executor_ref)."""
        ...

    def alive(self, ref: str) -> bool:
        """Whether anything of the attempt still runs."""
        ...

    def status(self, ref: str) -> AttemptStatus:
        """``alive``, with why an attempt has not started yet or how it ended, where known."""
        ...

    def stop(self, ref: str) -> None:
        """Asks the agents to stop (SIGTERM: they stop the command and commit outputs)."""
        ...

    def kill(self, ref: str) -> None:
        """Ends everything of the attempt at once."""
        ...
