"""Two trainer replicas (real processes) on one Postgres, under concurrent submissions: every job
starts exactly once, a queue with a quota of one never runs two jobs at once, and when the replica
running a job is killed (SIGKILL) the other takes the job over once its lease lapses and the job
finishes, its agent reporting to the survivor."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from jobhelpers import RUNNING, SUCCEEDED, py, spec, wait_for, wait_until
from support import free_port, wait_serving
from tunelab.common.grpc.channel import open_channel
from tunelab.trainer.local import session_members
from tunelab.trainer.v1 import trainer_pb2 as pb

LEASE_S = 4.0  # short, so that a dead replica's jobs are taken over within seconds

# A job that notes when it ran and, in a queue with a quota of one, whether another ran beside it.
RUN = """
import os, sys, time
log, marker, name = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY) if marker != "-" else None
except FileExistsError:
    fd = None
    open(log, "a").write(f"overlap {name}\\n")
open(log, "a").write(f"ran {name}\\n")
time.sleep(0.5)
if fd is not None:
    os.close(fd)
    os.remove(marker)
"""


class Replica:
    """``python -m tunelab.trainer`` as one replica: its own name, port and data directory."""

    def __init__(self, name: str, port: int, env: dict[str, str], data_dir: Path, log: Path) -> None:
        self.name, self.address, self.log = name, f"127.0.0.1:{port}", log
        self.env = {
            **os.environ,
            **env,
            "TUNELAB_REPLICA_ID": name,
            "TUNELAB_PORT": str(port),
            "TUNELAB_DATA_DIR": str(data_dir),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tunelab.trainer"], env=self.env, stdout=out, stderr=out
            )

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
                self.kill()


@pytest.fixture
def replicas(postgres_url: str, tmp_path: Path) -> Iterator[tuple[list[Replica], list[Any]]]:
    """Two trainer replicas started together on one empty Postgres database, and a client of each."""
    from tunelab.cli.clients.trainer import TrainerClient

    ports = [free_port(), free_port()]
    env = {
        "TUNELAB_STATE_URL": postgres_url,
        "TUNELAB_REPLICA_LEASE_S": str(LEASE_S),
        # Agents reach whichever replica answers, as through a Kubernetes Service.
        "TUNELAB_AGENT_TRAINER_ADDR": "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports),
        "TUNELAB_DATASETS_ADDR": f"127.0.0.1:{free_port()}",  # nothing listens: no job mounts a dataset
        "TUNELAB_ENVIRONMENTS_ADDR": f"127.0.0.1:{free_port()}",
        "TUNELAB_METRICS_PORT": "0",
        "TUNELAB_SCHEDULE_INTERVAL_S": "0.2",
        "TUNELAB_REPORT_INTERVAL_S": "0.3",
        "TUNELAB_HEARTBEAT_TIMEOUT_S": "120",
        "TUNELAB_GPUS": "2",
        "TUNELAB_LOG_LEVEL": "info",
    }
    started = [
        Replica(name, port, env, tmp_path / name, tmp_path / f"{name}.log")
        for name, port in zip(("trainer-a", "trainer-b"), ports, strict=True)
    ]
    for replica in started:  # both at once: they race to create the tables and the default queue
        replica.start()
    channels = []
    try:
        for replica in started:
            wait_serving(replica.address, timeout=60, proc=replica.proc)
        channels = [open_channel(r.address) for r in started]
        yield started, [TrainerClient(c) for c in channels]
    finally:
        _kill_job_sessions(postgres_url)
        for channel in channels:
            channel.close()
        for replica in started:
            replica.stop()


def _kill_job_sessions(url: str) -> None:
    engine = create_engine(url)
    with engine.connect() as db:
        refs = [r[0] for r in db.execute(text("SELECT executor_ref FROM attempts")) if r[0]]
    engine.dispose()
    for ref in refs:
        for pid in session_members(int(ref.split(":")[0])):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _owner(url: str, job_id: str) -> str:
    engine = create_engine(url)
    with engine.connect() as db:
        owner = db.execute(text("SELECT owner FROM jobs WHERE id = :id"), {"id": job_id}).scalar_one()
    engine.dispose()
    return str(owner)


@pytest.mark.slow
def test_replicas_start_each_job_once_and_keep_quotas(replicas, tmp_path: Path) -> None:
    (a, b), clients = replicas
    clients[0].create_queue("solo", pb.Queue(max_concurrent_jobs=1))
    ran, marker = tmp_path / "ran.log", tmp_path / "solo.running"
    names = [f"solo-{i}" for i in range(6)] + [f"free-{i}" for i in range(6)]

    def submit(i: int, name: str) -> None:
        queue = "queues/solo" if name.startswith("solo") else "queues/default"
        argv = [*py(RUN), str(ran), str(marker) if queue == "queues/solo" else "-", name]
        clients[i % 2].submit(spec(argv, queue=queue), name)  # half through each replica

    threads = [threading.Thread(target=submit, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    jobs = {n: wait_for(clients[i % 2], n, timeout=180) for i, n in enumerate(names)}

    assert {n: j.state for n, j in jobs.items()} == dict.fromkeys(names, SUCCEEDED), jobs
    assert {n: len(j.attempts) for n, j in jobs.items()} == dict.fromkeys(names, 1)
    lines = ran.read_text().splitlines()
    assert sorted(lines) == sorted(f"ran {n}" for n in names)  # each ran once, none beside another solo
    spans = sorted(
        (j.attempts[0].start_time.ToNanoseconds(), j.attempts[0].end_time.ToNanoseconds())
        for n, j in jobs.items()
        if n.startswith("solo")
    )
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans)), spans
    assert "Traceback" not in a.log.read_text() + b.log.read_text()


@pytest.mark.slow
def test_a_killed_replicas_job_is_finished_by_the_other(replicas, postgres_url: str, tmp_path: Path) -> None:
    (a, b), clients = replicas
    flag = tmp_path / "go"
    code = (
        "import os, time\n"
        "print('started', flush=True)\n"
        f"while not os.path.exists({str(flag)!r}): time.sleep(0.1)\n"
        "print('finished', flush=True)\n"
    )
    for i in range(4):
        clients[i % 2].submit(spec(py(code)), f"long-{i}")
    for i in range(4):
        wait_for(clients[0], f"long-{i}", [RUNNING], timeout=120)
    owners = {f"long-{i}": _owner(postgres_url, f"long-{i}") for i in range(4)}
    victim, survivor = (a, b) if list(owners.values()).count("trainer-a") else (b, a)
    client = clients[1] if victim is a else clients[0]
    victim.kill()  # SIGKILL: its agents keep running, and nobody renews its hold on their jobs

    wait_until(
        lambda: {_owner(postgres_url, j) for j in owners} == {survivor.name}, 60, "the survivor's takeover"
    )
    flag.touch()
    for job_id in owners:
        done = wait_for(client, job_id, timeout=120)
        assert done.state == SUCCEEDED and done.attempt == 1, done  # the same attempt, re-attached
        texts = [line.text for line in client.logs(job_id)]
        assert texts.count("started") == 1 and texts.count("finished") == 1
    assert "re-attached" in survivor.log.read_text()
    # The survivor goes on starting new work alone.
    client.submit(spec(py("print('after')")), "after")
    assert wait_for(client, "after", timeout=60).state == SUCCEEDED
