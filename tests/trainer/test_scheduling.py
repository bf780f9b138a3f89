"""Queues through the service with real agents: priority order, GPU assignment, quota refusal,
cancel (SIGTERM, then SIGKILL after the grace period)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import grpc
import pytest

from jobhelpers import (
    CANCELLED,
    CANCELLING,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    log_text,
    py,
    rpc_error,
    spec,
    wait_for,
    wait_until,
)
from tunelab.trainer.v1 import trainer_pb2 as pb


def wait_file(flag: Path) -> str:
    return f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)\n"


def test_priority_then_submission_order(stack, tmp_path: Path) -> None:
    client = stack.client
    client.create_queue("solo", pb.Queue(max_concurrent_jobs=1))
    flag = tmp_path / "go"
    client.submit(spec(py(wait_file(flag)), queue="queues/solo"), "blocker")
    wait_for(client, "blocker", [RUNNING])
    for name, priority in [
        ("low", "low"),
        ("high", "high"),
        ("medium", "medium"),
        ("high2", "baize-high-priority"),
    ]:
        client.submit(spec(py("pass"), queue="queues/solo", priority_class=priority), name)
        time.sleep(0.01)
    wait_until(lambda: client.get("low").queue_position == 4, 10, "queue positions")
    positions = {n: client.get(n).queue_position for n in ("high", "high2", "medium", "low")}
    assert positions == {"high": 1, "high2": 2, "medium": 3, "low": 4}
    assert "runs 1 of at most 1 jobs" in client.get("high").phase

    flag.touch()
    jobs = {n: wait_for(client, n) for n in ("blocker", "high", "high2", "medium", "low")}
    assert {n: j.state for n, j in jobs.items()} == dict.fromkeys(jobs, SUCCEEDED)
    started = sorted(jobs, key=lambda n: jobs[n].attempts[0].start_time.ToNanoseconds())
    assert started == ["blocker", "high", "high2", "medium", "low"]
    assert jobs["high"].spec.priority == 100000 and jobs["low"].spec.priority == 1000
    assert jobs["high2"].spec.priority_class == "high"


def test_gpus_are_assigned_exclusively(stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = stack.client
    flag = tmp_path / "go"
    code = "import os\nprint('CUDA_VISIBLE_DEVICES=' + os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
    for name in ("a", "b", "c"):
        client.submit(spec(py(code + wait_file(flag)), resources=pb.Resources(gpu_count=1)), name)
    wait_for(client, "a", [RUNNING])
    wait_for(client, "b", [RUNNING])
    assert wait_until(lambda: client.get("c").phase, 10) == "waiting for 1 GPU(s); 0 free"
    cap = client.capacity()
    assert (cap.total_gpus, cap.free_gpus) == (2, 0)
    assert sorted(g.job for g in cap.gpus) == ["jobs/a", "jobs/b"]
    assert {tuple(client.get(n).assigned_gpus) for n in ("a", "b")} == {("0",), ("1",)}
    flag.touch()
    for name in ("a", "b", "c"):
        assert wait_for(client, name).state == SUCCEEDED
    seen = {
        n: re.findall(r"^CUDA_VISIBLE_DEVICES=(\S+)$", log_text(client, n), re.M) for n in ("a", "b", "c")
    }
    assert sorted(seen["a"] + seen["b"]) == ["0", "1"] and seen["c"][0] in ("0", "1")
    # A CPU job sees no GPU; the command gets its variables, the scheduler's, and no secrets.
    monkeypatch.setenv("TUNELAB_S3_SECRET_KEY", "not-for-jobs")
    code = "import os\nprint(repr(os.environ['CUDA_VISIBLE_DEVICES']), os.environ['MINE'])\n"
    code += "print(sorted(k for k in os.environ if k.startswith('TUNELAB_') and 'ADDR' not in k))\n"
    cpu = client.submit(spec(py(code), env_vars={"MINE": "yes"}), "cpu")
    assert wait_for(client, cpu.name).state == SUCCEEDED
    out = log_text(client, "cpu").splitlines()
    assert "'' yes" in out
    assert "['TUNELAB_ATTEMPT', 'TUNELAB_CACHE_DIR', 'TUNELAB_JOB', 'TUNELAB_NODE', 'TUNELAB_WORKER']" in out


def test_a_job_that_can_never_fit_is_refused_with_the_numbers(stack) -> None:
    client = stack.client
    client.create_queue("small", pb.Queue(gpu_quota=1))
    code, message = rpc_error(
        lambda: client.submit(spec(["true"], queue="queues/small", resources=pb.Resources(gpu_count=2)))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "asks for 2 GPU(s) but queue small has a quota of 1" in message
    code, message = rpc_error(
        lambda: client.submit(spec(["true"], resources=pb.Resources(gpu_count=1), workers=3))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "asks for 3 GPU(s) (1 per worker x 3 workers) but the executor has 2 (TUNELAB_GPUS)" in message
    code, message = rpc_error(lambda: client.submit(spec(["true"], queue="queues/nope")))
    assert code == grpc.StatusCode.NOT_FOUND and "queue 'nope' does not exist" in message
    assert not list(client.list())


def test_cancel_stops_the_process_group_then_kills_after_the_grace_period(stack) -> None:
    client = stack.client
    stubborn = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('ignoring SIGTERM', flush=True))\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    job = client.submit(spec(py(stubborn), cancel_grace_period={"seconds": 1}), "stubborn")
    wait_until(lambda: re.search(r"^child \d+$", log_text(client, job.name), re.M), 30, "the command's child")
    logs = log_text(client, job.name)
    command = re.search(r"\(pid (\d+)\)", logs)
    child = re.search(r"^child (\d+)$", logs, re.M)
    assert command and child, logs
    pids = [int(command.group(1)), int(child.group(1))]
    assert client.cancel(job.name).state == CANCELLING
    done = wait_for(client, job.name, timeout=20)
    assert done.state == CANCELLED and done.reason == "Cancelled"
    logs = log_text(client, job.name)
    assert "ignoring SIGTERM" in logs and "SIGKILL after 1s" in logs
    for pid in pids:  # the command and its child: the whole group is gone
        assert not _alive(pid), pid
    assert client.cancel(job.name).state == CANCELLED  # cancelling a finished job changes nothing


def test_cancel_a_queued_job_and_a_graceful_one(stack) -> None:
    client = stack.client
    client.create_queue("held", pb.Queue())
    client.update_queue(pb.Queue(name="queues/held", state=pb.Queue.STATE_PAUSED), ["state"])
    queued = client.submit(spec(["true"], queue="queues/held"), "held")
    assert wait_until(lambda: client.get("held").phase, 10) == "queue held is paused"
    assert client.cancel(queued.name).state == CANCELLED and client.get("held").attempt == 0
    graceful = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('bye', flush=True), sys.exit(0)))\n"
        "print('up', flush=True)\n"
        "time.sleep(600)\n"
    )
    job = client.submit(spec(py(graceful)), "graceful")
    wait_until(lambda: "up" in log_text(client, job.name).split(), 30, "the command")
    # The attempt runs as its job does (not STARTING for its whole life).
    wait_until(lambda: client.get(job.name).attempts[-1].state == RUNNING, 30, "the attempt RUNNING")
    client.cancel(job.name)
    done = wait_for(client, job.name, timeout=20)
    assert done.state == CANCELLED and "bye" in log_text(client, job.name).split()
    assert done.attempts[-1].state == CANCELLED and done.exit_code == 0
    assert client.get("held").state == CANCELLED and client.get("held").state != QUEUED


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
