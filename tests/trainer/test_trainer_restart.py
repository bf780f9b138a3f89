"""A trainer restart with jobs running: live agents are re-attached (no line lost or repeated);
attempts whose processes died meanwhile are failed as Lost and retried by their policy."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from jobhelpers import FAILED, RUNNING, SUCCEEDED, log_text, py, spec, wait_for, wait_until
from tunelab.trainer.local import session_members

TICKS = "import time\nfor i in range(25):\n    print('tick', i, flush=True)\n    time.sleep(0.2)\n"


def test_a_running_job_is_reattached(trainer_process) -> None:
    proc, stack = trainer_process
    client = stack.client
    job = client.submit(spec(py(TICKS)), "ticker")
    wait_until(lambda: "tick 3" in log_text(client, job.name), 30, "ticks")
    proc.kill()  # SIGKILL: no goodbye; the agent keeps the job running and its events buffered
    time.sleep(1.5)
    proc.start()
    done = wait_for(client, job.name, timeout=60)
    assert done.state == SUCCEEDED and done.attempt == 1, done
    ticks = [ln.text for ln in client.logs(job.name) if ln.text.startswith("tick")]
    assert ticks == [f"tick {i}" for i in range(25)]
    assert "re-attached" in proc.log.read_text()


def test_a_job_lost_while_the_trainer_was_down_is_retried(trainer_process, tmp_path: Path) -> None:
    proc, stack = trainer_process
    client = stack.client
    first = str(tmp_path / "first")  # not in the working directory: each attempt gets a new one
    code = (
        "import os, time\n"
        f"if not os.path.exists({first!r}):\n"
        f"    open({first!r}, 'w').close(); print('first run', flush=True); time.sleep(600)\n"
        "print('second run', flush=True)\n"
    )
    job = client.submit(spec(py(code)), "lost")
    running = wait_for(client, job.name, [RUNNING])
    wait_until(lambda: "first run" in log_text(client, job.name).splitlines(), 30, "the first run")
    agent = int(running.executor_ref.split(":")[0])
    proc.kill()
    for pid in session_members(agent):  # the machine "dies": agent and command, no final report
        os.kill(pid, signal.SIGKILL)
    proc.start()
    done = wait_for(client, job.name, timeout=60)
    assert done.state == SUCCEEDED and done.attempt == 2
    assert (done.attempts[0].state, done.attempts[0].reason) == (FAILED, "Lost")
    assert "second run" in log_text(client, job.name).splitlines()
