"""Embedded replicas: ``python -m tunelab.engine`` processes the gateway starts, one per replica,
each on a free local port, logging to ``<data_dir>/gateway/logs/<deployment>-<n>.log``."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tunelab.gateway.specs import UpstreamSpec

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EngineProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def exited(self) -> int | None:
        return self.proc.poll()

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def failure(self, lines: int = 40) -> str:
        """Why the engine exited, as one line (see ``failure_line``)."""
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return failure_line(tail)


def failure_line(tail: list[str]) -> str:
    """Why a server exited, from the last lines it wrote, as one line: the message of its last error
    record (the engine logs a load failure as one JSON line, its traceback in a field of its own),
    else the last line (a Python traceback's last line names the exception)."""
    for line in reversed(tail):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "critical"):
            return _one_line(str(record.get("message", "")))
    return _one_line(next((line for line in reversed(tail) if line.strip()), ""))


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class EngineLauncher:
    def __init__(self, python: str, log_dir: Path) -> None:
        self.python = python
        self.log_dir = log_dir

    def start(
        self, name: str, model: Path, served_name: str, adapters: dict[str, Path], upstream: UpstreamSpec
    ) -> EngineProcess:
        port = free_port()
        cmd = [self.python, "-m", "tunelab.engine", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--model", str(model), "--served-model-name", served_name]
        for adapter, path in adapters.items():
            cmd += ["--lora-modules", f"{adapter}={path}"]
        if upstream.device:
            cmd += ["--device", upstream.device]
        if upstream.dtype:
            cmd += ["--dtype", upstream.dtype]
        if upstream.max_batch_size:
            cmd += ["--max-batch-size", str(upstream.max_batch_size)]
        if upstream.trust_remote_code:
            cmd.append("--trust-remote-code")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.info("started engine %s", name, extra={"pid": proc.pid, "port": port, "model": str(model)})
        return EngineProcess(f"http://127.0.0.1:{port}", proc, log_path)
