"""Fixtures of the trainer tests: the datasets service in this process (local store), the trainer
in this process or as a real process (for restarts), clients to both. Jobs run through real
agents (`tunelab agent`) in their own sessions; every test's leftover job processes are killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jobhelpers import free_port, wait_serving
from tunelab.common.grpc.channel import open_channel

# Short periods, so that scheduling, reports, retries and cancels take fractions of a second.
FAST: dict[str, Any] = {
    "schedule_interval_s": 0.2,
    "report_interval_s": 0.3,
    "heartbeat_timeout_s": 60.0,
    "backoff_base_s": 0.2,
    "backoff_max_s": 1.0,
    "cancel_grace_s": 3.0,
    "gpus": 2,
}


@dataclass
class DatasetsService:
    address: str
    client: Any  # tunelab.cli.clients.datasets.DatasetClient


@pytest.fixture
def datasets_service(tmp_path: Path) -> Iterator[DatasetsService]:
    from tunelab.cli.clients.datasets import DatasetClient
    from tunelab.datasets.server import build_server
    from tunelab.datasets.settings import DatasetSettings

    settings = DatasetSettings(data_dir=tmp_path / "datasets", port=0, metrics_port=0)
    server, _ = build_server(settings)
    server.start()
    channel = open_channel(server.address)
    yield DatasetsService(server.address, DatasetClient(channel, tmp_path / "client-cache"))
    channel.close()
    server.stop(1)


@dataclass
class EnvironmentsService:
    address: str
    client: Any  # tunelab.cli.clients.environments.EnvironmentClient


@pytest.fixture
def environments_service(tmp_path: Path) -> Iterator[EnvironmentsService]:
    """The environments service in this process, building with this Python."""
    from tunelab.cli.clients.environments import EnvironmentClient
    from tunelab.environments.server import build_server
    from tunelab.environments.settings import EnvironmentSettings

    settings = EnvironmentSettings(
        data_dir=tmp_path / "envs", port=0, metrics_port=0, pythons=[os.path.realpath(sys.executable)]
    )
    server, _ = build_server(settings)
    server.start()
    channel = open_channel(server.address)
    yield EnvironmentsService(server.address, EnvironmentClient(channel, tmp_path / "env-client-cache"))
    channel.close()
    server.stop(1)


@dataclass
class TrainerStack:
    """The trainer (and the datasets service) with clients; ``trainer`` is the domain object when
    the service runs in this process."""

    address: str
    client: Any  # tunelab.cli.clients.trainer.TrainerClient
    datasets: Any  # DatasetClient
    data_dir: Path
    trainer: Any = None
    metrics_port: int = 0
    channels: list[Any] = field(default_factory=list)


def _settings(data_dir: Path, datasets_addr: str, **overrides: Any) -> Any:
    from tunelab.trainer.settings import TrainerSettings

    values = {**FAST, **overrides}
    values.setdefault("environments_addr", f"127.0.0.1:{free_port()}")  # nothing listens: unreachable
    return TrainerSettings(data_dir=data_dir, port=0, metrics_port=0, datasets_addr=datasets_addr, **values)


def kill_job_sessions(data_dir: Path) -> None:
    """SIGKILLs every process of every job session the trainer under ``data_dir`` started."""
    from sqlalchemy import create_engine, text

    from tunelab.trainer.local import session_members

    db = data_dir / "trainer" / "state.sqlite"
    if not db.exists():
        return
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        refs = [r[0] for r in conn.execute(text("SELECT executor_ref FROM attempts")) if r[0]]
    engine.dispose()
    for ref in refs:
        pid = int(ref.split(":")[0])
        for member in session_members(pid):
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def make_stack(tmp_path: Path, datasets_service: DatasetsService) -> Iterator[Any]:
    """``make_stack(**settings)``: the trainer in this process with FAST settings overridden."""
    from tunelab.cli.clients.trainer import TrainerClient
    from tunelab.trainer.server import build_server

    started: list[tuple[Any, TrainerStack]] = []

    def make(**overrides: Any) -> TrainerStack:
        data_dir = tmp_path / "trainer-data"
        server, trainer = build_server(_settings(data_dir, datasets_service.address, **overrides))
        server.start()
        trainer.start()
        channel = open_channel(server.address)
        stack = TrainerStack(
            server.address,
            TrainerClient(channel),
            datasets_service.client,
            data_dir,
            trainer,
            channels=[channel],
        )
        started.append((server, stack))
        return stack

    yield make
    for server, stack in started:
        kill_job_sessions(stack.data_dir)
        for channel in stack.channels:
            channel.close()
        server.stop(1)


@pytest.fixture
def stack(make_stack: Any) -> TrainerStack:
    return make_stack()


class TrainerProcess:
    """``python -m tunelab.trainer`` as a real process, restartable on the same port and data dir."""

    def __init__(self, data_dir: Path, env: dict[str, str], log: Path) -> None:
        self.data_dir, self.log = data_dir, log
        self.port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            **env,
            "TUNELAB_DATA_DIR": str(data_dir),
            "TUNELAB_PORT": str(self.port),
            "TUNELAB_METRICS_PORT": str(self.metrics_port),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TrainerProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tunelab.trainer"], env=self.env, stdout=out, stderr=out
            )
        wait_serving(self.address, proc=self.proc)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def trainer_process(
    tmp_path: Path, datasets_service: DatasetsService
) -> Iterator[tuple[TrainerProcess, TrainerStack]]:
    """The trainer as a process (FAST settings as TUNELAB_* variables) and a stack pointing at it."""
    from tunelab.cli.clients.trainer import TrainerClient

    env = {f"TUNELAB_{k.upper()}": str(v) for k, v in FAST.items()}
    env.update(
        TUNELAB_DATASETS_ADDR=datasets_service.address,
        TUNELAB_ENVIRONMENTS_ADDR=f"127.0.0.1:{free_port()}",
        TUNELAB_LOG_LEVEL="info",
    )
    data_dir = tmp_path / "trainer-data"
    proc = TrainerProcess(data_dir, env, tmp_path / "trainer.log").start()
    channel = open_channel(proc.address)
    stack = TrainerStack(
        proc.address, TrainerClient(channel), datasets_service.client, data_dir,
        metrics_port=proc.metrics_port, channels=[channel],
    )  # fmt: skip
    yield proc, stack
    kill_job_sessions(data_dir)
    channel.close()
    proc.stop()


@pytest.fixture
def cli(stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cli(*args)``: `tunelab ARGS` in this process against ``stack``'s trainer, with no config
    file, stack or token of this machine in the way; returns typer's Result."""
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    monkeypatch.setenv("TUNELAB_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("TUNELAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TUNELAB_TRAINER_ADDR", stack.address)
    monkeypatch.delenv("TUNELAB_TOKEN", raising=False)
    monkeypatch.delenv("TUNELAB_OUTPUT", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # usage errors on one line
    return lambda *args: CliRunner().invoke(app, list(args))
