"""Embedded replicas: ``python -m tunelab.engine`` processes the gateway starts, one per replica,
each on a free local port, logging to ``<data_dir>/gateway/logs/<deployment>-<n>.log``. Each one
requires a random API key of its own, which the gateway passes in its environment and sends with
every call (``EngineProcess.api_key``); runtime adapter loads are confined to its adapter roots.

An engine dies with its gateway: on Linux each one is started with the parent-death signal set
(``PR_SET_PDEATHSIG``), so a gateway killed with SIGKILL leaves no engine behind holding memory, a
GPU and a port after its restart has started new ones."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.gateway.specs import UpstreamSpec

log = logging.getLogger(__name__)

# The variable an engine reads its API key from (tunelab.engine.access.API_KEY_ENV; the gateway
# does not import the engine).
ENGINE_API_KEY_ENV = "TUNELAB_ENGINE_API_KEY"

# Run as ``python -c _ORPHAN_GUARD <gateway pid> <command...>``: sets the parent-death signal, then
# becomes the command (exec keeps the signal). preexec_fn would do the same in the forked child, but
# it is unsafe in a multithreaded process (gRPC's fork handlers warn of it), so a fresh interpreter
# does it instead. If the gateway died before prctl, the parent is already another process: exit.
# SIGKILL rather than SIGTERM: with the gateway gone the engine has no client left and no state to
# save (the kernel frees its memory, GPU and port), while a graceful stop may wait on a generation.
_ORPHAN_GUARD = """\
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}")
if os.getppid() != int(sys.argv[1]):
    sys.exit("the gateway that started this engine has exited")
os.execvp(sys.argv[2], sys.argv[2:])
"""


def tied_to_this_process(cmd: list[str]) -> list[str]:
    """``cmd`` run so that it is killed when this process dies (Linux; elsewhere ``cmd`` as is)."""
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-c", _ORPHAN_GUARD, str(os.getpid()), *cmd]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EngineProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    api_key: str = field(default="", repr=False)  # what the engine requires (``engine_env``)
    log_offset: int = 0  # where this process's lines begin in ``log`` (earlier runs wrote before)

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
        """Why the engine exited, as one line (see ``failure_line``), from what this process wrote."""
        try:
            with self.log.open("rb") as f:
                f.seek(max(self.log_offset, f.seek(0, os.SEEK_END) - 64 * 1024))
                tail = f.read().decode(errors="replace").splitlines()[-lines:]
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
        # The parent-death signal fires when the *thread* that forked the child exits, not the
        # process: engines are forked from this one thread, which lives as long as the gateway.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="engine-spawn")

    def spawn(
        self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Starts ``cmd``, tied to the gateway's life, with stdout and stderr appended to ``log_path``."""
        return self._spawner.submit(self._popen, tied_to_this_process(cmd), log_path, env).result()

    @staticmethod
    def _popen(cmd: list[str], log_path: Path, env: dict[str, str] | None) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as out:
            return subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def start(
        self,
        name: str,
        model: Path,
        served_name: str,
        adapters: dict[str, Path],
        upstream: UpstreamSpec,
        adapter_roots: tuple[Path, ...] = (),
        port: int = 0,
    ) -> EngineProcess:
        """Starts an engine on ``port`` (0: a free one)."""
        port = port or free_port()
        api_key = secrets.token_urlsafe(32)
        cmd = [self.python, "-m", "tunelab.engine", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--model", str(model), "--served-model-name", served_name]
        for adapter, path in adapters.items():
            cmd += ["--lora-modules", f"{adapter}={path}"]
        for root in adapter_roots:
            cmd += ["--adapter-root", str(root)]
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
        offset = log_path.stat().st_size if log_path.exists() else 0
        proc = self.spawn(cmd, log_path, engine_env(os.environ, api_key))
        log.info("started engine %s", name, extra={"pid": proc.pid, "port": port, "model": str(model)})
        return EngineProcess(f"http://127.0.0.1:{port}", proc, log_path, api_key, offset)


def engine_env(env: Mapping[str, str], api_key: str) -> dict[str, str]:
    """An engine's environment: the gateway's without its ``TUNELAB_*`` settings (the stack's token
    and storage credentials among them; the engine reads none), plus the engine's own key, which
    only the gateway knows. The key travels in the environment, which only the engine's user can
    read (argv is visible to every user in /proc)."""
    kept = {k: v for k, v in env.items() if not k.startswith("TUNELAB_")}
    return {**kept, ENGINE_API_KEY_ENV: api_key}
