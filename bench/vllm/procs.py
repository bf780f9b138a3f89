"""The processes the vLLM benchmark starts: each in a process group of its own (so vLLM's engine-core
child goes with it), logging to a file, and every group killed at the end, on failure too.

The process group ids are also written to ``<work>/pgids`` as they start, so a wrapping script can
kill what is left should this process itself be killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class StartFailed(RuntimeError):
    """A process exited or did not become ready in time; the message ends with its log's tail."""


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def fail(self, why: str) -> StartFailed:
        return StartFailed(f"{self.name}: {why}; last lines of {self.log.name}:\n{tail(self.log)}")


class Processes:
    """Starts processes in new sessions and stops every one of them (``stop_all``, idempotent)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[Proc] = []
        self._pgids = work / "pgids"

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        env: dict[str, str],
        log: Path,
        cwd: Path | None = None,
        cpus: frozenset[int] | None = None,
    ) -> Proc:
        """``cpus``: the CPUs the process and its children may run on (all, if None)."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            out.write(f"$ {' '.join(cmd)}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                list(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        with self._pgids.open("a") as f:
            f.write(f"{popen.pid}\n")
        return proc

    def run(
        self,
        name: str,
        cmd: Sequence[str],
        env: dict[str, str],
        log: Path,
        timeout_s: float,
        cwd: Path | None = None,
    ) -> float:
        """Runs a command to its end (in its own group, so a timeout kills all of it); its seconds."""
        started = time.monotonic()
        proc = self.start(name, cmd, env, log, cwd)
        try:
            code = proc.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise proc.fail(f"did not finish within {timeout_s:g}s") from None
        if code != 0:
            raise proc.fail(f"exited with {code}")
        return time.monotonic() - started

    def stop(self, proc: Proc, grace_s: float = 15.0) -> None:
        """SIGTERM to the group, SIGKILL to whatever of it is left after the grace period."""
        pgid = proc.popen.pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # children that outlived their parent, too
        except ProcessLookupError:
            pass
        try:
            proc.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_http(proc: Proc, url: str, timeout_s: float) -> float:
    """Seconds until ``url`` answers 2xx; StartFailed if the process exits or time runs out."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not proc.alive():
            raise proc.fail(f"exited with {proc.popen.returncode} before {url} answered")
        if http_ok(url):
            return time.monotonic() - started
        time.sleep(0.5)
    raise proc.fail(f"{url} did not answer within {timeout_s:g}s")
