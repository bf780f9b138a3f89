"""The attempt's filesystem: where the agent stages the working directory and how the command
sees it. The executor says which way (environment variables it sets for the agent):

- ``TUNELAB_AGENT_FILESYSTEM=private`` (the local executor): the staging tree is bound onto the
  working directory in a mount namespace of the command's own (:mod:`tunelab.cli.agent.sandbox`),
  so the job's absolute paths exist for the job only. Where no such namespace can be had (not
  root, no user namespaces), the command runs in the staging tree itself, but only when the
  working directory is the executor's default one for the job (``TUNELAB_AGENT_DEFAULT_WORKDIR``):
  another path would not be where the job expects it.
- ``TUNELAB_AGENT_FILESYSTEM=pod`` (a Kubernetes pod): the working directory is the staging tree,
  mounted there by the pod (a subPath of the attempt's volume); the command runs in it.

``TUNELAB_AGENT_SCRATCH`` is the attempt's scratch area: ``tree/`` (what the job sees at its
working directory), ``markers/`` (which manifest each mount holds) and ``snapshots/`` (of the
outputs, for commits), side by side on one filesystem so snapshots are hard links. Under the local
executor the agent removes it when the attempt ends; the executor removes what an agent it killed
left (``agent.pid`` says whose it is).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tunelab.cli.agent.command import Command, CommandNotFound
from tunelab.cli.agent.mounts import Mount, MountError

PRIVATE, POD = "private", "pod"
AGENT_PID = "agent.pid"  # in the scratch area: whose it is, for an executor that kills the agent
# Run by its path in isolated mode (it needs the standard library only): it then works wherever the
# agent's own code comes from, an installed package or PYTHONPATH, which isolated mode ignores.
LAUNCHER = str(Path(__file__).with_name("sandbox.py"))
NEEDS = (
    "run the trainer as root, or allow unprivileged user namespaces (sysctl "
    "kernel.unprivileged_userns_clone=1 / user.max_user_namespaces), or leave out --working-dir "
    "so the job runs in a directory of the executor's"
)


@dataclass(frozen=True)
class FilesystemConfig:
    """What the executor tells the agent about the attempt's filesystem."""

    mode: str = PRIVATE
    scratch: Path | None = None  # None: a temporary directory
    default_work: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FilesystemConfig:
        mode = env.get("TUNELAB_AGENT_FILESYSTEM", PRIVATE)
        if mode not in (PRIVATE, POD):
            raise ValueError(f"TUNELAB_AGENT_FILESYSTEM={mode!r}: use {PRIVATE} or {POD}")
        scratch, default = env.get("TUNELAB_AGENT_SCRATCH"), env.get("TUNELAB_AGENT_DEFAULT_WORKDIR")
        return cls(
            mode,
            Path(scratch) if scratch else None,
            Path(os.path.normpath(default)) if default else None,
        )


def probe() -> str:
    """Why the command cannot get a private mount namespace ("" when it can)."""
    argv = [sys.executable, "-I", LAUNCHER, "--probe"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode == 0:
        return ""
    return (done.stdout + done.stderr).strip() or f"exit status {done.returncode}"


class AttemptFilesystem:
    """The attempt's staging tree and how its command sees it: ``prepare``, materialize the
    mounts into ``tree``, ``start`` the command, ``cleanup``."""

    def __init__(self, config: FilesystemConfig, working_dir: str) -> None:
        self.config = config
        self.work = Path(os.path.normpath(working_dir))
        self.scratch = config.scratch or Path(tempfile.mkdtemp(prefix="tunelab-attempt-"))
        self.tree = self.scratch / "tree"
        self.markers, self.snapshots = self.scratch / "markers", self.scratch / "snapshots"
        self.fetch = self.scratch / "fetch"
        self.namespace = False  # whether the command gets its own mount namespace
        self.cwd = self.tree  # where the command starts (its working directory, as the agent sees it)

    def prepare(self) -> str:
        """Decides how the command will see the tree and makes a fresh one; returns a line for the
        log ("" when there is nothing to say). Raises MountError where the job cannot run."""
        note = ""
        if self.config.mode == POD:
            if self.config.scratch is not None:
                for name in ("markers", "snapshots", "fetch"):
                    shutil.rmtree(self.scratch / name, ignore_errors=True)
            self.tree.mkdir(parents=True, exist_ok=True)
            if _same(self.tree, self.work):
                self.cwd = self.work
            else:
                note = f"the working directory {self.work} is not the pod's volume: running in {self.tree}"
            return note
        if self.work == Path("/"):
            raise MountError("the working directory cannot be /: give --working-dir a directory of its own")
        why = probe()
        if not why:
            self.namespace = True
        elif self.config.default_work is not None and self.work == self.config.default_work:
            note = f"no private mount namespace ({why}): running in {self.tree}"
        else:
            raise MountError(
                f"the working directory {self.work} needs a private mount namespace, which this "
                f"machine does not give the job ({why}): {NEEDS}"
            )
        remove(self.scratch, keep_top=True)
        self.tree.mkdir(parents=True)
        (self.scratch / AGENT_PID).write_text(str(os.getpid()))  # the executor's, if it kills us
        return note

    def seen_by_agent(self, path: str) -> str:
        """Where the agent finds a path of the job's view (the working directory is the tree)."""
        if not self.namespace:
            return path
        rel = os.path.relpath(os.path.normpath(path), self.work)
        return path if rel == ".." or rel.startswith("../") else os.path.normpath(self.tree / rel)

    def start(
        self, argv: list[str], env: dict[str, str], mounts: list[Mount], on_line: Callable[[int, str], None]
    ) -> Command:
        """Starts the command in its view: through the launcher when it has a namespace."""
        if not self.namespace:
            return Command(argv, self.cwd, env, on_line)
        binds = [(str(self.work / m.rel), str(m.path), not m.output) for m in mounts]
        spec = {"work": str(self.work), "tree": str(self.tree), "scratch": str(self.scratch), "binds": binds}
        read, write = os.pipe()
        with os.fdopen(read, "rb") as pipe:
            try:
                options = ["--report-fd", str(write), "--spec", json.dumps(spec)]
                launcher = [sys.executable, "-I", LAUNCHER, *options, "--", *argv]
                cmd = Command(launcher, self.scratch, env, on_line, pass_fds=(write,))
            finally:
                os.close(write)
            failure = pipe.read().decode("utf-8", "replace")  # nothing: the command started
        if failure:
            cmd.wait()
            kind, _, message = failure.partition("\n")
            raise CommandNotFound(message) if kind == "exec" else MountError(message)
        return cmd

    def cleanup(self) -> None:
        """Removes the scratch area (the local executor's; a pod's goes with the pod)."""
        if self.config.mode == PRIVATE:
            remove(self.scratch)


def remove(path: Path, keep_top: bool = False) -> None:
    """Removes a tree the job may have made read-only in places."""

    def retry(func: Callable[[str], object], failed: str, _: object) -> None:
        try:  # a second pass below gets what this one opened up
            os.chmod(os.path.dirname(failed), 0o700)
            func(failed)
        except OSError:
            pass

    if not path.is_dir():
        return
    if keep_top:
        for entry in path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, onerror=retry)
            else:
                entry.unlink()
        return
    shutil.rmtree(path, onerror=retry)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
