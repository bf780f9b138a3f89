"""Helpers shared by the benchmarks: machine description, result files, ports, process CPU time,
timed subprocesses, and an s3rver (npm) S3 server started as a subprocess.

Every benchmark writes ``bench/results/<name>.json``::

    {"benchmark", "date", "machine", "command", "metrics", "targets", "met"}
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- machine and results ------------------------------------------------------------------------
def machine_info() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "memory_gib": round(memory / 1024**3, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()} ({_os_release()})",
    }


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def repo_relative(text: str) -> str:
    """Replaces this checkout's absolute path with a relative one: results never name the machine's paths."""
    return text.replace(str(REPO) + os.sep, "")


def command_line() -> str:
    exe = sys.executable
    if exe.startswith(str(REPO) + os.sep):
        exe = os.path.relpath(exe, REPO)
    return shlex.join([exe, *sys.argv])


@dataclass
class Target:
    """A goal for one metric: ``value op threshold``."""

    metric: str
    op: str  # ">=" or "<="
    threshold: float
    value: float | None = None
    note: str = ""

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "metric": self.metric,
            "target": f"{self.op} {self.threshold:g}",
            "value": self.value,
            "met": self.met,
        }
        if self.note:
            out["note"] = self.note
        return out


def write_result(
    name: str, metrics: dict[str, object], targets: dict[str, Target], extra: dict[str, object] | None = None
) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    body: dict[str, object] = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "command": command_line(),
        "metrics": metrics,
        "targets": {k: t.as_dict() for k, t in targets.items()},
        "met": all(t.met for t in targets.values()),
    }
    if extra:
        body.update(extra)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# -- processes ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (its own threads, from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")": state is field 3, utime field 14, stime field 15 (1-based in proc(5)).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def proc_read_chars(pid: int | str = "self") -> int:
    """Bytes the process passed through read()-like calls (``rchar``, page-cache hits included)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


@dataclass
class Timed:
    seconds: float
    cpu_seconds: float
    returncode: int
    output: str = ""


def run_timed(
    cmd: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 900
) -> Timed:
    """Runs ``cmd``; wall seconds and the CPU seconds of it and its children (wait4's rusage)."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return Timed(seconds, ru.ru_utime + ru.ru_stime, proc.returncode, text)


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- s3rver ---------------------------------------------------------------------------------------
S3RVER = REPO / "tools" / "node_modules" / ".bin" / "s3rver"


@dataclass
class S3rver:
    """s3rver (npm, single-threaded node) on a free port, storing under ``directory``."""

    directory: Path
    buckets: list[str]
    access_key: str = "S3RVER"
    secret_key: str = "S3RVER"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    _started: list[float] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def start(self) -> S3rver:
        if not S3RVER.exists():
            raise FileNotFoundError(f"{S3RVER} is missing: run `make tools`")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        cmd = [
            str(S3RVER),
            "--directory",
            str(self.directory),
            "--port",
            str(self.port),
            "--address",
            "127.0.0.1",
            "--silent",
        ]
        for bucket in self.buckets:
            cmd += ["--configure-bucket", bucket]
        self.log = self.directory.with_name(self.directory.name + ".log")
        # s3rver 3.7 encrypts ListObjectsV2 continuation tokens with a cipher OpenSSL 3 (Node ≥ 17)
        # only has in its legacy provider: without it, listing more than 1,000 keys fails.
        env = {
            **os.environ,
            "NODE_OPTIONS": (os.environ.get("NODE_OPTIONS", "") + " --openssl-legacy-provider").strip(),
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        wait_port(self.port, 30, self.proc)
        return self

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return proc_cpu_seconds(self.proc.pid)

    def object_count(self, bucket: str) -> int:
        """Objects s3rver holds in ``bucket`` (it keeps one ``*._S3rver_object`` file per object)."""
        root = self.directory / bucket
        return sum(1 for p in root.rglob("*._S3rver_object")) if root.exists() else 0

    def stop(self, remove: bool = True) -> None:
        stop_process(self.proc)
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)


def fmt_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
