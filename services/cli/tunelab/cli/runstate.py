"""The embedded stack's run state on disk and its processes: ``run/<service>.json`` records,
liveness checks that survive pid reuse, signals, ports, gRPC health and log tails."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tunelab.common.errors import TunelabError


class StackError(TunelabError):
    """The stack cannot be started or stopped as asked; the message says what to do."""


@dataclass(frozen=True)
class RunRecord:
    """What ``run/<service>.json`` says about a started service."""

    service: str
    pid: int
    module: str
    address: str
    metrics_port: int
    log: str
    started: float
    http_port: int = 0  # the gateway's HTTP front door; 0: the service has none

    @property
    def http_url(self) -> str:
        """``http://host:port`` of the service's HTTP port, "" without one."""
        if not self.http_port or not self.address:
            return ""
        return f"http://{self.address.rsplit(':', 1)[0]}:{self.http_port}"


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    state: str  # running | stopped | exited
    pid: int | None
    address: str
    health: str
    log: str


# -- run files -------------------------------------------------------------------------------
def run_dir(data_dir: Path) -> Path:
    return data_dir / "run"


def read_record(data_dir: Path, service: str) -> RunRecord | None:
    pid_file = run_dir(data_dir) / f"{service}.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        info = json.loads((run_dir(data_dir) / f"{service}.json").read_text())
        return RunRecord(**{**info, "pid": pid})
    except (OSError, ValueError, TypeError):
        return RunRecord(service, pid, f"tunelab.{service}", "", 0, "", 0.0)


def running_record(data_dir: Path, service: str) -> RunRecord | None:
    """The service's record when its process is alive, else None."""
    rec = read_record(data_dir, service)
    return rec if rec and process_alive(rec.pid, rec.module) else None


def _write_record(data_dir: Path, rec: RunRecord) -> None:
    run = run_dir(data_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / f"{rec.service}.json").write_text(json.dumps(asdict(rec), indent=2) + "\n")
    (run / f"{rec.service}.pid").write_text(f"{rec.pid}\n")


def _clear_record(data_dir: Path, service: str) -> None:
    for suffix in (".pid", ".json"):
        (run_dir(data_dir) / f"{service}{suffix}").unlink(missing_ok=True)


def process_alive(pid: int, module: str) -> bool:
    """True when ``pid`` runs and (where /proc tells) is ``python -m <module>``, not a reused pid."""
    try:  # reap it if it is our own exited child (tests, --foreground)
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process reusing the pid
    if not Path("/proc/self").is_dir():
        return True  # no procfs (macOS): trust the pid
    proc = Path(f"/proc/{pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    return state != "Z" and module.encode() in cmdline


def _wait_gone(pid: int, module: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while process_alive(pid, module):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise StackError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return False


def check_health(address: str, token: str = "", timeout_s: float = 2.0) -> str:
    """The overall gRPC health of ``address``: SERVING, NOT_SERVING, ... or UNREACHABLE."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tunelab.common.grpc.channel import open_channel

    with open_channel(address, token) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            return (
                "UNREACHABLE"
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                else code.name
            )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def log_tail(path: str, lines: int = 12) -> str:
    """The last lines of a service log, JSON log lines shortened to ``level: message``."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    out = []
    for line in text:
        try:
            entry = json.loads(line)
            out.append(f"  {entry.get('level', '')}: {entry.get('message', '')}")
        except (ValueError, AttributeError):
            out.append(f"  {line}")
    return "\n".join(out)


# -- up, down, status ------------------------------------------------------------------------
