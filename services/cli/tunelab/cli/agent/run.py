"""One worker of one attempt, from assignment to exit (see the package docstring)."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc

from tunelab.cli.agent import mounts as mnt
from tunelab.cli.agent.command import STDOUT, Command, CommandNotFound, build_argv, command_env, resolve
from tunelab.cli.agent.filesystem import AttemptFilesystem, FilesystemConfig
from tunelab.cli.agent.image import layer_image
from tunelab.cli.agent.outputs import Outputs
from tunelab.cli.agent.recipemetrics import failure_reason, parse_event, to_point
from tunelab.cli.agent.reporter import Reporter
from tunelab.cli.clients.datasets import DatasetClient
from tunelab.cli.clients.environments import EnvironmentClient
from tunelab.cli.clients.trainer import TrainerClient
from tunelab.common.errors import FailedPrecondition, TunelabError
from tunelab.trainer.v1 import trainer_pb2 as pb

STARTING, RUNNING = pb.Job.STATE_STARTING, pb.Job.STATE_RUNNING
DELIVER_TIMEOUT_S = 600.0
# Why an attempt failed, by the step it failed in.
STAGE_REASON = {
    "datasets": "DatasetUnavailable",
    "environment": "EnvironmentError",
    "command": "AgentError",
    "outputs": "OutputCommitFailed",
}


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class Outcome:
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    signal: int = 0


def _seconds(d: object, default: float) -> float:
    value = d.ToTimedelta().total_seconds()  # type: ignore[attr-defined]
    return value if value > 0 else default


class Agent:
    def __init__(
        self,
        trainer: TrainerClient,
        datasets: Callable[[], DatasetClient],
        environments: Callable[[], EnvironmentClient],
        job: str,
        attempt: int,
        worker: int,
        filesystem: FilesystemConfig | None = None,
    ) -> None:
        self.trainer, self.datasets, self.environments = trainer, datasets, environments
        self.job, self.attempt, self.worker = job, attempt, worker
        self.filesystem = filesystem or FilesystemConfig.from_env(os.environ)
        self.fs: AttemptFilesystem | None = None
        self.stage = "datasets"
        self.stop_requested = threading.Event()
        self.grace_s = 30.0
        self.failure: dict[str, object] | None = None  # the command's last `failed` metrics event
        self.cmd: Command | None = None
        self.reporter: Reporter

    def run(self) -> int:
        try:
            a = self.trainer.assignment(self.job, self.attempt, self.worker)
        except grpc.RpcError as exc:
            print(f"[agent] no assignment for {self.job} attempt {self.attempt}: {exc.details()}", flush=True)  # type: ignore[attr-defined]
            return 3
        self.grace_s = _seconds(a.cancel_grace_period, 30.0)
        self.reporter = Reporter(
            self.trainer, self.job, self.attempt, self.worker, _seconds(a.report_interval, 2)
        )
        self.reporter.on_cancel = self.stop_requested.set
        self.reporter.start()
        signal.signal(signal.SIGTERM, self._on_sigterm)
        where = a.env_vars.get("TUNELAB_NODE") or os.uname().nodename
        gpus = ",".join(a.assigned_gpus) or "none"
        self.reporter.say(f"attempt {self.attempt} of {self.job} on {where}, GPUs: {gpus}")
        for note in os.environ.get("TUNELAB_EXECUTOR_NOTES", "").splitlines():  # limits, --image
            self.reporter.say(note)
        outcome = self._guarded(a)
        self.reporter.say(f"exit: {outcome.reason or 'Succeeded'} {outcome.message}".rstrip())
        self.reporter.exit(outcome.reason, outcome.message, outcome.exit_code, outcome.signal)
        return 0 if self.reporter.close(DELIVER_TIMEOUT_S) else 4

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested.set()
        if self.cmd is None and self.stage in ("datasets", "environment"):
            raise Cancelled()

    def _check(self) -> None:
        if self.stop_requested.is_set():
            raise Cancelled()

    def _guarded(self, a: pb.JobAssignment) -> Outcome:
        try:
            return self._run(a)
        except Cancelled:
            return Outcome("Cancelled", f"cancelled while {self.stage} were being prepared")
        except mnt.MountError as exc:
            return Outcome("InvalidMount", str(exc))
        except CommandNotFound as exc:
            return Outcome("CommandNotFound", str(exc))
        except FailedPrecondition as exc:
            reason = "InvalidMount" if self.stage == "datasets" else STAGE_REASON[self.stage]
            return Outcome(reason, exc.message)
        except TunelabError as exc:
            return Outcome(STAGE_REASON[self.stage], exc.message)
        except grpc.RpcError as exc:
            return Outcome(STAGE_REASON[self.stage], f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - reported, with the traceback in the agent's log
            traceback.print_exc()
            return Outcome(STAGE_REASON[self.stage], f"{type(exc).__name__}: {exc}")
        finally:
            self.stage = "ended"  # a SIGTERM from here on stops nothing
            if self.fs is not None:  # after the outputs are committed, before the exit is reported
                self.fs.cleanup()

    def _run(self, a: pb.JobAssignment) -> Outcome:
        spec = a.spec
        self.reporter.phase(STARTING, "materializing datasets")
        fs = self.fs = AttemptFilesystem(self.filesystem, spec.working_dir)
        if note := fs.prepare():
            self.reporter.say(note)
        mounts = mnt.plan(spec, fs.tree)
        client = self.datasets() if mounts else None
        for m in mounts:
            self._check()
            assert client is not None
            self.reporter.say(mnt.materialize(client, m, fs.markers, fs.fetch))
        self.stage = "environment"
        self.reporter.phase(STARTING, "materializing environment")
        env = command_env(os.environ, spec.env_vars, a.env_vars, self._environment(a))
        self._check()
        work = Path(spec.working_dir) if fs.namespace else fs.cwd
        argv = resolve(build_argv(list(spec.command), env), env, work, fs.seen_by_agent)
        outputs = None
        # Worker 0 commits the outputs: in a job of several nodes the recipe writes checkpoints on
        # rank 0, and the trainer ends the attempt on worker 0's exit (or any worker's failure).
        if self.worker == 0 and client is not None and any(m.output for m in mounts):
            provenance = {"job": self.job, "attempt": str(self.attempt)}
            outputs = Outputs(client, mounts, self.reporter, provenance, fs.snapshots)
            outputs.baseline()
        self.stage = "command"
        self.reporter.phase(RUNNING, "running")
        self.cmd = fs.start(argv, env, mounts, self._on_line)
        self.reporter.say(f"started {shlex.join(argv)} (pid {self.cmd.pid}) in {work}")
        if outputs is not None:
            outputs.start(_seconds(a.output_commit_interval, 600.0))
        code = self._wait(self.cmd)
        if outputs is not None:
            outputs.stop()
            if not self.reporter.superseded.is_set():
                self.stage = "outputs"
                self.reporter.phase(RUNNING, "committing outputs")
                outputs.commit(final=True)
        return self._outcome(code)

    def _environment(self, a: pb.JobAssignment) -> Path:
        name = a.spec.environment
        if not name:
            self.reporter.say(f"no environment given: running with the agent's Python ({sys.executable})")
            return Path(sys.executable).parent
        client = self.environments()
        if a.environment_env_key:
            root = client.cache_dir / "envs" / a.environment_env_key
            client.pull(name, root, env_key=a.environment_env_key)
        else:
            root = client.materialize(name)
        self.reporter.say(f"environment {name} ({root.name[:12]}) at {root}")
        if line := layer_image(root):
            self.reporter.say(line)
        return root / "bin"

    def _on_line(self, stream: int, text: str) -> None:
        self.reporter.line(stream, text)
        if stream != STDOUT or (record := parse_event(text)) is None:
            return
        if (point := to_point(record)) is not None:
            self.reporter.metrics(point)
        if record.get("event") == "failed":
            self.failure = record

    def _wait(self, cmd: Command) -> int:
        while True:
            code = cmd.wait(0.5)
            if code is not None:
                return code
            if self.stop_requested.is_set():
                grace = 0.0 if self.reporter.superseded.is_set() else (self.reporter.grace_s or self.grace_s)
                self.reporter.say(f"stopping the command: SIGTERM, SIGKILL after {grace:.0f}s")
                return cmd.stop(grace)

    def _outcome(self, code: int) -> Outcome:
        exit_code = code if code >= 0 else None
        sig = -code if code < 0 else 0
        if self.stop_requested.is_set():
            return Outcome("Cancelled", f"stopped on request (exit status {code})", exit_code, sig)
        if code == 0:
            return Outcome("", "", 0)
        tail = "\n".join(self.cmd.stderr_tail if self.cmd else [])
        if sig:
            name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
            return Outcome("Killed" if sig == signal.SIGKILL else "Signaled", f"killed by {name}", None, sig)
        if self.failure is not None and (failed := failure_reason(self.failure, code)) is not None:
            return Outcome(failed[0], failed[1], code)
        return Outcome(
            "NonZeroExit", f"exit status {code}" + (f"; last lines of stderr:\n{tail}" if tail else ""), code
        )
