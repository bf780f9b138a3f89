"""The local executor: each attempt's agent is a process in a session of its own on this machine.

The agent (``tunelab agent --job … --attempt N --worker 0``) runs the command in a process group
inside that session, so the whole job is one session: ``stop`` sends SIGTERM to the agent (which
stops the command's group gracefully and commits outputs) and ``kill`` sends SIGKILL to every
process of the session. An attempt is known by ``pid:start-time`` of its agent, so a restarted
trainer can tell its agents (still running, re-attached) from a reused pid.

A job's CPU and memory limits (``--resources``, all workers together) hold where the machine gives
the trainer cgroups (``confinement``): the agent and all it starts run in the attempt's cgroup. A
thread waits for each agent, so none is left a zombie and its cgroup goes as it ends. Where there
are no cgroups, the trainer's log says so once and each job with limits in its log; a job's
``--image`` is never used here, and its log says that too. The agent says these lines
(TUNELAB_EXECUTOR_NOTES).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tunelab.trainer.cgroups import Group, Limits
from tunelab.trainer.confinement import Confinement
from tunelab.trainer.executor import AttemptStatus, Placement
from tunelab.trainer.gpus import GpuInfo
from tunelab.trainer.records import workers
from tunelab.trainer.v1 import trainer_pb2 as pb

log = logging.getLogger(__name__)
NOTES_ENV = "TUNELAB_EXECUTOR_NOTES"  # lines the agent says in the job's log
CLOSE_WAIT_S = 2.0  # at close: for agents that are ending to go, with their cgroups
AGENT_PID = "agent.pid"  # in an attempt's scratch area: the agent that stages there


def limits_of(spec: pb.JobSpec) -> Limits:
    """The attempt's limits: ``resources`` (the limits, as in Kubernetes) of all workers together,
    as they all run on this machine."""
    n = workers(spec)
    return Limits(spec.resources.cpu_millis * n, spec.resources.memory_bytes * n)


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
        endpoint_host: str = "127.0.0.1",
        *,
        spec_of: Callable[[str], pb.JobSpec] | None = None,
        cgroup_parent: str = "",
        work_root: Path | None = None,
    ) -> None:
        """``endpoint_host``: the host in the endpoints of server workloads, as their callers
        (the gateway) reach this machine. ``spec_of(job_id)``: the job's spec (the registry's),
        for its limits and image; unset, attempts run unconfined and say nothing of them.
        ``cgroup_parent``: where attempt cgroups go (TUNELAB_CGROUP_PARENT). ``work_root``: where
        jobs without --working-dir run (``work_root/<job>``)."""
        self.agent_argv = agent_argv
        self.endpoint_host = endpoint_host
        self.runs_dir = runs_dir
        self.agent_env = dict(agent_env)
        self._gpus = gpus
        self._cpu = cpu_millis or (os.cpu_count() or 1) * 1000
        self._memory = memory_bytes or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        self.node = socket.gethostname()
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._reapers: dict[int, threading.Thread] = {}  # agent pid → the thread that waits for it
        self.spec_of = spec_of
        self.work_root = work_root
        self.confinement = Confinement(runs_dir, cgroup_parent)

    def gpus(self) -> list[GpuInfo]:
        return list(self._gpus)

    def cpu_millis(self) -> int:
        return self._cpu

    def memory_bytes(self) -> int:
        return self._memory

    def place(
        self, job_id: str, attempt: int, workers: int, gpus: list[str], server_port: int | None = None
    ) -> Placement:
        """One agent; the command runs as ``max(workers, GPUs)`` processes (torchrun when > 1).

        torchrun reads ``PET_<ARG>`` as the default of ``--<arg>``, so these also configure a
        command that is ``torchrun …`` itself (on a port of its own, not the default 29500).
        A server listens on ``server_port``, or on a port free now when that is 0."""
        nproc = max(workers, len(gpus), 1)
        server: dict[str, str] = {}
        endpoint = ""
        if server_port is not None:
            port = server_port or free_port()
            server, endpoint = {"PORT": str(port)}, f"http://{self.endpoint_host}:{port}"
        return Placement(
            worker_count=1,
            node=self.node,
            endpoint=endpoint,
            env_vars={
                **server,
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
        env = {**_inherited(), **self.agent_env, "PYTHONUNBUFFERED": "1"}
        env.update(self._filesystem(job_id, attempt))
        spec = self.spec_of(job_id) if self.spec_of is not None else None
        group, notes = self._confine(job_id, attempt, spec) if spec is not None else (None, [])
        if notes:
            env[NOTES_ENV] = "\n".join(notes)
        with log_path.open("ab") as out:
            try:
                proc = subprocess.Popen(
                    group.wrap(argv) if group is not None else argv,
                    env=env,
                    cwd=self.runs_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # the job's own session: survives the trainer, killed as one
                )
            except OSError:
                if group is not None:
                    group.remove()
                raise
        ref = f"{proc.pid}:{start_time(proc.pid)}"
        self._children[proc.pid] = proc
        if group is not None:
            self.confinement.started(ref, group)
        reaper = threading.Thread(target=self._reap, args=(proc, ref), name=f"agent-{proc.pid}", daemon=True)
        self._reapers[proc.pid] = reaper
        reaper.start()
        log.info("started agent", extra={"job": job_id, "attempt": attempt, "pid": proc.pid})
        return ref

    def _confine(self, job_id: str, attempt: int, spec: pb.JobSpec) -> tuple[Group | None, list[str]]:
        """The attempt's cgroup with its limits (None without limits or cgroups) and what the
        job's log says of its limits and image."""
        group, notes = None, []
        if limits := limits_of(spec):
            group, line = self.confinement.create(job_id, attempt, limits, workers(spec))
            notes.append(line)
        if spec.image:
            notes.append(
                f"--image {spec.image} is recorded, not used: the local executor runs commands on this host"
            )
        return group, notes

    def _filesystem(self, job_id: str, attempt: int) -> dict[str, str]:
        """What the agent is told of the attempt's filesystem: each job gets a view of its own,
        staged in the attempt's scratch area (see ``tunelab.cli.agent.filesystem``)."""
        area = scratch(self.runs_dir, job_id, attempt)
        env = {"TUNELAB_AGENT_FILESYSTEM": "private", "TUNELAB_AGENT_SCRATCH": str(area)}
        if self.work_root is not None:
            env["TUNELAB_AGENT_DEFAULT_WORKDIR"] = os.path.normpath(self.work_root / job_id)
        return env

    def _reap(self, proc: subprocess.Popen[bytes], ref: str) -> None:
        """Waits for an agent this process started; its cgroup goes with it (unless ``kill``,
        which takes the agent out of ``_children`` first, sees to that)."""
        code = proc.wait()
        if self._children.pop(proc.pid, None) is not None:
            self.confinement.ended(ref, code)
        self._reapers.pop(proc.pid, None)

    def alive(self, ref: str) -> bool:
        if _running(ref):
            return True
        self.confinement.sweep()  # the cgroup of an agent of an earlier run of the trainer
        return False

    def status(self, ref: str) -> AttemptStatus:
        """A process starts at once and its agent tells the rest, but for what only its cgroup
        knows: that the kernel killed part of it at its memory limit (OOMKilled, whether the agent
        lived to report or not), or that the agent could not start in it."""
        running = _running(ref)
        reason, message = self.confinement.verdict(ref, running)
        if not running:
            self.confinement.sweep()
        return AttemptStatus(running, reason=reason, message=message)

    def stop(self, ref: str) -> None:
        pid, _ = _parse(ref)
        if self.alive(ref):
            _send(pid, signal.SIGTERM)

    def close(self) -> None:
        """At the trainer's stop. Agents still running keep their cgroups (the next start
        re-attaches them and removes what is left); agents ending now (their job has just
        finished, or they were killed with the stop) get CLOSE_WAIT_S to go, and their cgroups
        with them; then empty cgroups go."""
        deadline = time.monotonic() + CLOSE_WAIT_S
        for reaper in list(self._reapers.values()):
            reaper.join(max(0.0, deadline - time.monotonic()))
        self.confinement.sweep(everything=True)

    def kill(self, ref: str) -> None:
        """SIGKILLs the session and the cgroup (which catches what left the session), then
        removes the cgroup."""
        pid, _ = _parse(ref)
        child = self._children.pop(pid, None)  # first: the reaper thread then leaves the cgroup to us
        running = _running(ref)
        self.confinement.group(ref, running)  # known, or read from the agent before it goes
        targets = set(session_members(pid))
        if running:
            targets.add(pid)
        for member in targets:
            _send(member, signal.SIGKILL)
        if child is not None:
            child.wait()
        self.confinement.forget(ref)
        self.confinement.drop(ref)
        remove_scratch(self.runs_dir, pid)


def scratch(runs_dir: Path, job_id: str, attempt: int) -> Path:
    """The attempt's scratch area, where its agent stages the job's filesystem."""
    return runs_dir / job_id / f"attempt-{attempt}"


def remove_scratch(runs_dir: Path, pid: int) -> None:
    """Removes the scratch area of the killed agent ``pid`` (which wrote its pid there): an agent
    removes its own as the attempt ends, unless it is killed first."""
    for owner in runs_dir.glob(f"*/attempt-*/{AGENT_PID}"):
        try:
            mine = owner.read_text().strip() == str(pid)
        except OSError:
            continue
        if mine:
            shutil.rmtree(owner.parent, ignore_errors=True)


def _inherited() -> dict[str, str]:
    """This process's environment without the trainer's own settings (``TUNELAB_*``: its token,
    the object store's keys, ports), which are not the job's business."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TUNELAB_")}


def _running(ref: str) -> bool:
    """Whether the attempt's agent runs: its pid is alive, no zombie (waiting for the thread that
    reaps it), and started when the agent did (not a reused pid)."""
    pid, started = _parse(ref)
    fields = _stat(pid)
    if fields is None and not Path("/proc/self").is_dir():  # no procfs: trust the pid
        return _pid_exists(pid)
    return fields is not None and fields[0] not in ("Z", "X") and (not started or fields[19] == started)


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
