"""The tunelab side of the envbuild benchmark: the environments service as a process, timed builds
through the client, the phase breakdown from the build log, and an import check of the result."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common as bc

from tunelab.cli.clients.environments import EnvironmentClient
from tunelab.common.grpc.channel import open_channel
from tunelab.environments.v1 import environments_pb2 as pb


@dataclass
class Build:
    env: pb.Environment
    seconds: float
    cpu_seconds: float
    phases: dict[str, float] = field(default_factory=dict)


def _tree_cpu(pid: int) -> float:
    """User + system CPU of a process and its waited-for children (uv runs as the service's child)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / bc.CLK_TCK


class Tunelab:
    """``python -m tunelab.environments`` on a fresh data dir (so a fresh uv cache) and a local store."""

    def __init__(self, work: Path, base_python: Path) -> None:
        self.work = work
        self.base_python = base_python
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: EnvironmentClient | None = None

    def __enter__(self) -> Tunelab:
        self.work.mkdir(parents=True)
        port = bc.free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TUNELAB_", "UV_", "PIP_"))},
            "TUNELAB_DATA_DIR": str(self.work / "data"),
            "TUNELAB_PORT": str(port),
            "TUNELAB_METRICS_PORT": "0",
            "TUNELAB_PYTHONS": json.dumps([str(self.base_python)]),
        }
        log = (self.work / "service.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunelab.environments"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        bc.wait_port(port, 60, self.proc)
        self.channel = open_channel(f"127.0.0.1:{port}")
        self.client = EnvironmentClient(self.channel, self.work / "client-cache")
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()
        bc.stop_process(self.proc)

    def build(self, name: str, requirements: str, exclude: list[str]) -> Build:
        assert self.client is not None and self.proc is not None
        spec = pb.EnvironmentSpec(
            python_version="3.11",
            requirements=requirements,
            exclude=exclude,
            include_system_site_packages=True,
        )
        cpu = _tree_cpu(self.proc.pid)
        started = time.perf_counter()
        env = self.client.create(name, spec)
        if env.state not in (pb.Environment.STATE_READY, pb.Environment.STATE_FAILED):
            env = self.client.wait(name, timeout=1800)
        seconds = time.perf_counter() - started
        if env.state != pb.Environment.STATE_READY:
            raise RuntimeError(f"tunelab build of {name} failed: {env.error}")
        return Build(env, seconds, _tree_cpu(self.proc.pid) - cpu, self.phases(name))

    def phases(self, name: str) -> dict[str, float]:
        """Seconds spent per build phase, from the build log's timestamps."""
        assert self.client is not None
        lines = list(self.client.logs(name))
        out: dict[str, float] = {}
        for line, nxt in itertools.pairwise(lines):
            spent = nxt.time.ToNanoseconds() / 1e9 - line.time.ToNanoseconds() / 1e9
            out[line.phase] = round(out.get(line.phase, 0.0) + spent, 3)
        return out

    @staticmethod
    def one_changed_pin(lock: str, package: str) -> str:
        """``package==<the release before the locked one>`` (a leaf whose dependencies stay put)."""
        match = re.search(rf"^{package}==(\S+)", lock, flags=re.M)
        if not match:
            raise RuntimeError(f"{package} is not in the lock")
        with urllib.request.urlopen(f"https://pypi.org/pypi/{package}/json", timeout=30) as resp:
            releases: dict[str, Any] = json.load(resp)["releases"]

        def key(v: str) -> tuple[int, ...]:
            return tuple(int(p) for p in re.findall(r"\d+", v))

        stable = sorted((v for v, files in releases.items() if files and re.fullmatch(r"[\d.]+", v)), key=key)
        older = [v for v in stable if key(v) < key(match.group(1))]
        return f"{package}=={older[-1]}"

    def check_imports(self, name: str, target: Path, imports: str) -> tuple[bool, str]:
        """Pulls the environment into ``target`` and imports the recipe's packages from there."""
        assert self.client is not None
        self.client.pull(name, target)
        ran = subprocess.run(
            [str(target / "bin" / "python"), "-c", f"{imports}; print(torch.__version__, peft.__version__)"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        return ran.returncode == 0, (ran.stdout + ran.stderr).strip()[-500:]
