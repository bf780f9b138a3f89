"""The restart policy of embedded replicas, on real processes standing in for engines: the backoff
doubles up to its cap and starts over once a replica was stable; an engine that keeps dying while it
loads is given up after its tries (at once when it said it cannot load), quoting only what its last
start wrote; nothing is started again once the replicas were stopped."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunelab.gateway.engines import EngineProcess
from tunelab.gateway.specs import ReplicaStatus
from tunelab.gateway.supervision import (
    EngineFailed,
    EngineReplicas,
    RestartPolicy,
    Supervisor,
    restart_due_in,
)

SERVE = "import time; time.sleep(600)"


class Starts:
    """Starts ``python -c SCRIPT`` as replica ``i``'s engine: ``scripts(i, n)`` for its n-th start."""

    def __init__(self, tmp_path: Path, scripts) -> None:
        self.tmp_path, self.scripts = tmp_path, scripts
        self.count: dict[int, int] = {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, i: int, port: int) -> EngineProcess:
        n = self.count[i] = self.count.get(i, 0) + 1
        log = self.tmp_path / f"engine-{i}.log"
        offset = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            proc = subprocess.Popen([sys.executable, "-c", self.scripts(i, n)], stdout=out, stderr=out)
        self.procs.append(proc)
        return EngineProcess(f"http://127.0.0.1:{port or 1000 + n}", proc, log, "", offset)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def starts(tmp_path: Path):
    made: list[Starts] = []

    def make(scripts) -> Starts:
        made.append(Starts(tmp_path, scripts))
        return made[-1]

    yield make
    for s in made:
        s.close()


def healthy(url: str) -> ReplicaStatus:
    return ReplicaStatus(url, True)


def loading(url: str) -> ReplicaStatus:
    return ReplicaStatus(url, False, error="loading")


def until_due(replicas: EngineReplicas) -> None:
    deadline = time.monotonic() + 30
    while restart_due_in(replicas) > 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def kill(replicas: EngineReplicas, i: int = 0) -> None:
    replicas.slots[i].engine.proc.kill()
    replicas.slots[i].engine.proc.wait()


def exited(replicas: EngineReplicas, i: int = 0) -> None:
    replicas.slots[i].engine.proc.wait(60)


def crash_notes(supervisor: Supervisor, replicas: EngineReplicas, crashes: int) -> list[str]:
    """Each crash of a replica that had answered healthy: the note it left."""
    notes = []
    for _ in range(crashes):
        assert supervisor.check(replicas, healthy)[0].healthy
        kill(replicas)
        notes.append(supervisor.check(replicas, healthy)[0].error)
        until_due(replicas)
        assert "started again, loading" in supervisor.check(replicas, healthy)[0].error
    return notes


def test_the_backoff_doubles_to_its_cap_and_starts_over_once_stable(starts) -> None:
    launch = starts(lambda i, n: SERVE)
    doubling = Supervisor(RestartPolicy(backoff_s=0.01, backoff_max_s=0.04, stable_s=3600))
    replicas = EngineReplicas("d", launch, 1)
    notes = crash_notes(doubling, replicas, 4)
    killed = r"engine exited with signal 9 \(SIGKILL\) after \d+ s"
    for note, (delay, n) in zip(notes, [("0.01", 1), ("0.02", 2), ("0.04", 3), ("0.04", 4)], strict=True):
        assert re.fullmatch(f"{killed}; restarting in {delay} s \\(restart {n}\\)", note), note
    assert launch.count == {0: 5}
    status = doubling.check(replicas, healthy)[0]
    assert status.restarts == 4 and re.fullmatch(killed, status.restart_reason)

    stable = Supervisor(RestartPolicy(backoff_s=0.01, backoff_max_s=0.04, stable_s=0))
    replicas = EngineReplicas("d", starts(lambda i, n: SERVE), 1)
    assert all("restarting in 0.01 s" in note for note in crash_notes(stable, replicas, 3))


def test_an_engine_dying_while_it_loads_is_given_up_after_its_tries(starts) -> None:
    said = {1: "first failure", 2: "second failure"}  # the third start writes nothing
    launch = starts(lambda i, n: f"print({said.get(n, '')!r}, end=''); raise SystemExit(1)")
    supervisor = Supervisor(RestartPolicy(backoff_s=0.01, load_tries=3))
    replicas = EngineReplicas("d", launch, 1)
    log = replicas.slots[0].engine.log
    for n in (1, 2):
        exited(replicas)
        note = supervisor.check(replicas, loading)[0].error
        assert note.startswith(f"engine exited with code 1 while loading: {said[n]} (log: {log}); ")
        assert note.endswith(f"restarting in {0.01 * 2 ** (n - 1):g} s (restart {n})"), note
        until_due(replicas)
        supervisor.check(replicas, loading)
    exited(replicas)
    with pytest.raises(EngineFailed) as failed:
        supervisor.check(replicas, loading)
    # The third start wrote nothing: what earlier starts wrote is not quoted as its reason.
    assert failed.value.message == (
        f"replica 0: engine exited with code 1 while loading (log: {log}); gave up after 3 tries"
    )
    assert launch.count == {0: 3}


def test_an_engine_that_cannot_load_is_given_up_at_once(starts) -> None:
    record = {"level": "error", "message": "cannot load /m: no"}
    cannot = f"import json; print(json.dumps({record!r})); raise SystemExit(3)"
    launch = starts(lambda i, n: SERVE if i == 0 else cannot)
    supervisor = Supervisor(RestartPolicy(backoff_s=0.01))
    replicas = EngineReplicas("d", launch, 2)
    exited(replicas, 1)
    statuses = supervisor.check(replicas, healthy)
    assert statuses[0].healthy and not statuses[1].healthy
    assert statuses[1].error.startswith("engine exited with code 3 while loading: cannot load /m: no (log: ")
    assert replicas.settled(statuses)  # a load waits no longer: one serves, the other never will
    kill(replicas, 0)
    supervisor.check(replicas, healthy)
    until_due(replicas)
    supervisor.check(replicas, healthy)
    assert launch.count == {0: 2, 1: 1}


def test_nothing_is_started_again_once_stopped(starts) -> None:
    launch = starts(lambda i, n: SERVE)
    supervisor = Supervisor(RestartPolicy(backoff_s=0.01))
    replicas = EngineReplicas("d", launch, 1)
    supervisor.check(replicas, healthy)
    kill(replicas)
    assert "restarting in 0.01 s" in supervisor.check(replicas, healthy)[0].error
    replicas.stop(1)
    until_due(replicas)
    assert supervisor.check(replicas, healthy)[0].error == "stopped"
    assert launch.count == {0: 1}


def test_an_engine_that_cannot_be_started_again_counts_as_a_try(starts) -> None:
    def scripts(i: int, n: int) -> str:
        if n > 1:
            raise OSError(28, "No space left on device")
        return SERVE

    launch = starts(scripts)
    supervisor = Supervisor(RestartPolicy(backoff_s=0.01, load_tries=2))
    replicas = EngineReplicas("d", launch, 1)
    supervisor.check(replicas, healthy)
    kill(replicas)
    supervisor.check(replicas, healthy)
    until_due(replicas)
    note = supervisor.check(replicas, healthy)[0].error
    assert note.startswith("engine could not be started ([Errno 28] No space left on device) while loading")
    assert note.endswith("restarting in 0.02 s (restart 2)"), note
    until_due(replicas)
    with pytest.raises(EngineFailed, match="gave up after 2 tries"):
        supervisor.check(replicas, healthy)
