"""Running the job's command: its argv (under torchrun when the attempt has several processes),
its environment (the job environment's bin first on PATH), its output pumped line by line, and
stopping it (SIGTERM to its process group, SIGKILL after the grace period)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

STDOUT, STDERR = 1, 2  # LogLine.Stream values
MAX_LINE = 64 * 1024


class CommandNotFound(Exception):
    pass


def command_env(
    base: Mapping[str, str], job_vars: Mapping[str, str], assigned: Mapping[str, str], bin_dir: Path
) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k != "TUNELAB_TOKEN" and not k.startswith("TUNELAB_AGENT_")}
    env.update(job_vars)
    env.update(assigned)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", os.defpath)])
    env["PYTHONUNBUFFERED"] = "1"
    if (bin_dir.parent / "pyvenv.cfg").exists():
        env["VIRTUAL_ENV"] = str(bin_dir.parent)
    env.pop("PYTHONHOME", None)
    return env


def build_argv(command: list[str], env: Mapping[str, str]) -> list[str]:
    """``command``, under torchrun (of the job's Python) when the attempt has several processes:
    PET_NPROC_PER_NODE > 1, or several nodes (PET_NNODES > 1, one process each).

    ``python x.py`` becomes ``python -m torch.distributed.run x.py``; any other program runs with
    ``--no-python``; a command that already is torchrun is left alone (PET_* configure it)."""
    nproc = int(env.get("PET_NPROC_PER_NODE", "1") or 1)
    nnodes = int(env.get("PET_NNODES", "1") or 1)
    head = os.path.basename(command[0])
    if (nproc <= 1 and nnodes <= 1) or head == "torchrun" or "torch.distributed.run" in command[:3]:
        return list(command)
    python = shutil.which("python", path=env.get("PATH")) or "python"
    launcher = [python, "-m", "torch.distributed.run"]
    if head.startswith("python"):
        return [*launcher, *command[1:]]
    return [*launcher, "--no-python", *command]


def resolve(
    argv: list[str], env: Mapping[str, str], cwd: Path, seen_at: Callable[[str], str] = str
) -> list[str]:
    """argv with its program found on the job's PATH (or relative to the working directory).

    Paths are the job's; ``seen_at`` maps one to where the agent finds it (the job's working
    directory is the attempt's staging tree)."""
    program = argv[0]
    if "/" in program:
        path = program if os.path.isabs(program) else str(cwd / program)
        if _executable(seen_at(path)):
            return argv
        raise CommandNotFound(f"command {program!r} does not exist or is not executable (in {cwd})")
    folders = env.get("PATH", os.defpath).split(os.pathsep)
    for folder in folders:
        candidate = os.path.join(folder if os.path.isabs(folder) else str(cwd / folder), program)
        if _executable(seen_at(candidate)):
            return [candidate, *argv[1:]]
    raise CommandNotFound(
        f"command {program!r} not found on PATH ({folders[0]} first); install it in the job's "
        "environment or give its path"
    )


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


class Command:
    """A started command with its output pumped to ``on_line(stream, text)``."""

    def __init__(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        on_line: Callable[[int, str], None],
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._on_line = on_line
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                process_group=0,  # its own group in the job's session: stopped as one
                pass_fds=pass_fds,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise CommandNotFound(f"cannot run {argv[0]!r}: {exc.strerror}") from None
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, STDOUT), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, STDERR), daemon=True),
        ]
        for t in self._pumps:
            t.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self, pipe: IO[bytes], stream: int) -> None:
        for raw in iter(lambda: pipe.readline(MAX_LINE), b""):
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            if stream == STDERR:
                self.stderr_tail.append(text)
            self._on_line(stream, text)
        pipe.close()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.signal_group(signal.SIGKILL)  # stragglers left in its group would hold the pipes open
        for t in self._pumps:
            t.join(5)
        return code

    def signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace_s: float) -> int:
        """SIGTERM to the command's group, SIGKILL after ``grace_s``; returns the exit status."""
        if self.proc.poll() is None:
            self.signal_group(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.proc.poll() is None:
            self.signal_group(signal.SIGKILL)
        code = self.wait()
        return code if code is not None else -9
