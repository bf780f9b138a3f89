"""Restart policies and backoff, restarting and deleting jobs, and logs that are followable after
the fact."""

from __future__ import annotations

from pathlib import Path

import grpc

from jobhelpers import FAILED, SUCCEEDED, log_text, py, rpc_error, spec, wait_for
from tunelab.trainer.v1 import trainer_pb2 as pb


def first_fails(marker: Path) -> str:
    """Fails on its first run, succeeds on the next (``marker`` lives outside the job's working
    directory, which is new for each attempt)."""
    return (
        "import os, sys\n"
        f"if not os.path.exists({str(marker)!r}):\n"
        f"    open({str(marker)!r}, 'w').close(); print('first run fails', file=sys.stderr); sys.exit(7)\n"
        "print('second run works')\n"
    )


def test_on_failure_retries_and_never_does_not(stack, tmp_path: Path) -> None:
    client = stack.client
    on_failure, never = pb.RESTART_POLICY_ON_FAILURE, pb.RESTART_POLICY_NEVER
    client.submit(spec(py(first_fails(tmp_path / "flaky")), restart_policy=on_failure), "flaky")
    client.submit(spec(py(first_fails(tmp_path / "once")), restart_policy=never), "once")
    flaky, once = wait_for(client, "flaky"), wait_for(client, "once")
    assert flaky.state == SUCCEEDED and flaky.attempt == 2
    first, second = flaky.attempts
    assert (first.state, first.reason, first.exit_code) == (FAILED, "NonZeroExit", 7)
    assert "first run fails" in first.message and second.state == SUCCEEDED
    assert "second run works" in log_text(client, "flaky")
    assert (once.state, once.reason, once.exit_code, once.attempt) == (FAILED, "NonZeroExit", 7, 1)
    assert "first run fails" in once.message


def test_backoff_limit_and_always(stack) -> None:
    client = stack.client
    client.submit(spec(py("import sys; sys.exit(1)"), backoff_limit=1), "doomed")
    client.submit(
        spec(py("print('again')"), restart_policy=pb.RESTART_POLICY_ALWAYS, backoff_limit=1), "loop"
    )
    doomed, loop = wait_for(client, "doomed"), wait_for(client, "loop")
    assert (doomed.state, doomed.reason, doomed.attempt) == (FAILED, "BackoffLimitExceeded", 2)
    assert "all 1 retries used" in doomed.message
    assert (loop.state, loop.attempt) == (SUCCEEDED, 2)
    assert log_text(client, "loop").split().count("again") == 2


def test_restart_and_delete(stack) -> None:
    client = stack.client
    job = client.submit(spec(py("print('hello')"), restart_policy=pb.RESTART_POLICY_NEVER), "again")
    assert wait_for(client, job.name).state == SUCCEEDED
    restarted = client.restart(job.name)
    assert restarted.state == pb.Job.STATE_QUEUED and restarted.reason == "Restarted"
    done = wait_for(client, job.name)
    assert done.state == SUCCEEDED and done.attempt == 2
    lines = list(client.logs(job.name, attempt=2))
    assert [ln.text for ln in lines if ln.stream == pb.LogLine.STREAM_STDOUT] == ["hello"]
    assert {ln.attempt for ln in lines} == {2}

    running = client.submit(spec(py("import time; time.sleep(600)")), "busy")
    wait_for(client, running.name, [pb.Job.STATE_RUNNING])
    code, message = rpc_error(lambda: client.delete("busy"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "--force" in message
    code, message = rpc_error(lambda: client.restart("busy"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    client.delete("busy", force=True)
    client.delete(job.name)
    assert not list(client.list())
    assert rpc_error(lambda: client.get(job.name))[0] == grpc.StatusCode.NOT_FOUND


def test_logs_are_stored_and_followable_after_the_fact(stack) -> None:
    client = stack.client
    code = (
        "import sys, time\n"
        "for i in range(30):\n"
        "    print('line', i, flush=True)\n"
        "    time.sleep(0.02)\n"
        "print('oops', file=sys.stderr)\n"
    )
    job = client.submit(spec(py(code)), "chatty")
    followed = [ln.text for ln in client.logs(job.name, follow=True, timeout=60)]  # ends with the job
    assert [t for t in followed if t.startswith("line")] == [f"line {i}" for i in range(30)]
    assert wait_for(client, job.name).state == SUCCEEDED
    stored = list(client.logs(job.name, follow=True))  # after the fact: everything, then the end
    assert [ln.text for ln in stored] == followed
    assert [ln.line_number for ln in stored] == list(range(1, len(stored) + 1))
    streams = {ln.text: ln.stream for ln in stored}
    assert streams["line 0"] == pb.LogLine.STREAM_STDOUT and streams["oops"] == pb.LogLine.STREAM_STDERR
    assert any(ln.stream == pb.LogLine.STREAM_AGENT for ln in stored)
    after = [ln.line_number for ln in client.logs(job.name, after_line=10)]
    assert after == list(range(11, len(stored) + 1))
    assert [ln.text for ln in client.logs(job.name, tail=2)] == followed[-2:]


def test_an_attempt_past_its_max_run_duration_is_stopped(stack) -> None:
    client = stack.client
    job = client.submit(spec(py("import time; time.sleep(600)"), max_run_duration={"seconds": 1}), "slow")
    done = wait_for(client, job.name, timeout=30)
    assert (done.state, done.reason, done.attempt) == (FAILED, "DeadlineExceeded", 1)
