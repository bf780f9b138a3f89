"""The local executor: each attempt's agent is a process in a session of its own on this machine.

The agent (``tunelab agent --job … --attempt N --worker 0``) runs the command in a process group
inside that session, so the whole job is one session: ``stop`` sends SIGTERM to the agent (which
stops the command's group gracefully and commits outputs) and ``kill`` sends SIGKILL to every
process of the session. An attempt is known by ``pid:start-time`` of its agent, so a restarted
trainer can tell its agents (still running, re-attached) from a reused pid.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tunelab.trainer.executor import AttemptStatus, Placement
from tunelab.trainer.gpus import GpuInfo

log = logging.getLogger(__name__)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str:
    fields = _stat(pid)
    return fields[19] if fields else ""


def session_members(sid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir() if Path("/proc/self").is_dir() else []:
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[3] == str(sid):
            members.append(int(entry.name))
    return members


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalExecutor:
    name = "local"

    def __init__(
        self,
        agent_argv: list[str],
        runs_dir: Path,
        agent_env: Mapping[str, str],
        gpus: list[GpuInfo],
        cpu_millis: int = 0,
        memory_bytes: int = 0,
    ) -> None:
        self.agent_argv = agent_argv
        self.runs_dir = runs_dir
        self.agent_env = dict(agent_env)
        self._gpus = gpus
        self._cpu = cpu_millis or (os.cpu_count() or 1) * 1000
        self._memory = memory_bytes or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.node = socket.gethostname()
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def gpus(self) -> list[GpuInfo]:
        return list(self._gpus)

    def cpu_millis(self) -> int:
        return self._cpu

    def memory_bytes(self) -> int:
        return self._memory

    def place(self, job_id: str, attempt: int, workers: int, gpus: list[str]) -> Placement:
        """One agent; the command runs as ``max(workers, GPUs)`` processes (torchrun when > 1).

        torchrun reads ``PET_<ARG>`` as the default of ``--<arg>``, so these also configure a
        command that is ``torchrun …`` itself (on a port of its own, not the default 29500)."""
        nproc = max(workers, len(gpus), 1)
        return Placement(
            worker_count=1,
            node=self.node,
            env_vars={
                "CUDA_VISIBLE_DEVICES": ",".join(gpus),
                "TUNELAB_JOB": f"jobs/{job_id}",
                "TUNELAB_ATTEMPT": str(attempt),
                "TUNELAB_NODE": self.node,
                "PET_NPROC_PER_NODE": str(nproc),
                "PET_NNODES": "1",
                "PET_NODE_RANK": "0",
                "PET_MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_PORT": str(free_port()),
            },
        )

    def start(self, job_id: str, attempt: int, placement: Placement) -> str:
        log_path = self.runs_dir / job_id / f"attempt-{attempt}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [*self.agent_argv, "--job", f"jobs/{job_id}", "--attempt", str(attempt), "--worker", "0"]
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env={**_inherited(), **self.agent_env, "PYTHONUNBUFFERED": "1"},
                cwd=self.runs_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the job's own session: survives the trainer, killed as one
            )
        self._children[proc.pid] = proc
        log.info("started agent", extra={"job": job_id, "attempt": attempt, "pid": proc.pid})
        return f"{proc.pid}:{start_time(proc.pid)}"

    def alive(self, ref: str) -> bool:
        pid, started = _parse(ref)
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            del self._children[pid]
            return False
        fields = _stat(pid)
        if fields is None:
            if not Path("/proc/self").is_dir():  # no procfs: trust the pid
                return _pid_exists(pid)
            return False
        return fields[0] not in ("Z", "X") and (not started or fields[19] == started)

    def status(self, ref: str) -> AttemptStatus:
        return AttemptStatus(self.alive(ref))  # a process starts at once; its agent tells the rest

    def stop(self, ref: str) -> None:
        pid, _ = _parse(ref)
        if self.alive(ref):
            _send(pid, signal.SIGTERM)

    def kill(self, ref: str) -> None:
        pid, _ = _parse(ref)
        targets = set(session_members(pid))
        if self.alive(ref):
            targets.add(pid)
        for member in targets:
            _send(member, signal.SIGKILL)
        child = self._children.pop(pid, None)
        if child is not None:
            child.wait()


def _inherited() -> dict[str, str]:
    """This process's environment without the trainer's own settings (``TUNELAB_*``: its token,
    the object store's keys, ports), which are not the job's business."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}


def _parse(ref: str) -> tuple[int, str]:
    pid, _, started = ref.partition(":")
    return int(pid), started


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _send(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
