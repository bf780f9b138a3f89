"""Server workloads (WORKLOAD_SERVER) on the local executor: a real HTTP server run by the real
agent on the port the trainer gives it ($PORT), answering at ``Job.endpoint``; restarted whenever
it exits (killed, or status 0) until it is cancelled or its backoff limit is used; refused when its
spec cannot be one; its endpoint kept in a database made before endpoints existed."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from jobhelpers import (
    CANCELLED,
    FAILED,
    RUNNING,
    TERMINAL,
    free_port,
    py,
    rpc_error,
    spec,
    wait_for,
    wait_until,
)
from tunelab.trainer import records
from tunelab.trainer.agentapi import with_port
from tunelab.trainer.convert import job_to_pb
from tunelab.trainer.lifecycle import Exit, server_ended
from tunelab.trainer.records import AttemptRecord, JobRecord
from tunelab.trainer.v1 import trainer_pb2 as pb

# Answers GET with what it is (attempt, pid, port); GET /exit makes it exit with status 0.
SERVER = """
import http.server, os, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"attempt {os.environ['TUNELAB_ATTEMPT']} pid {os.getpid()} port {sys.argv[1]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path == "/exit":
            print("leaving on request", file=sys.stderr, flush=True)
            os._exit(0)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy for 127.0.0.1


def fetch(url: str) -> str | None:
    try:
        with DIRECT.open(url, timeout=10) as response:
            return str(response.read().decode())
    except OSError:
        return None


def server_spec(*argv: str, **fields: Any) -> pb.JobSpec:
    fields.setdefault("backoff_limit", 5)
    return spec(["python", "-c", SERVER, *argv], workload=pb.WORKLOAD_SERVER, **fields)


def answering(client: Any, name: str, attempt: int) -> tuple[pb.Job, str]:
    """The job once attempt ``attempt`` runs and its endpoint answers, and what it answered."""
    deadline = time.monotonic() + 60
    while not ((job := client.get(name)).state == RUNNING and job.attempt == attempt):
        assert job.state not in TERMINAL and time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job.endpoint, job
    body = wait_until(lambda: fetch(job.endpoint), what=f"an answer from {job.endpoint}")
    assert body.startswith(f"attempt {attempt} pid "), body
    return job, body


def test_a_server_answers_is_restarted_whenever_it_exits_and_is_cancelled(stack: Any, cli: Any) -> None:
    client = stack.client
    submitted = cli("job", "submit", "--server", "--name", "web", "--resources", "nvidia.com/gpu=1",
                    "--backoff-limit", "5", "--", "python", "-c", SERVER, "$PORT")  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    job, body = answering(client, "jobs/web", 1)
    port = job.endpoint.rsplit(":", 1)[1]
    assert job.endpoint == f"http://127.0.0.1:{port}" and body.endswith(f"port {port}")  # $PORT given
    assert job.spec.workload == pb.WORKLOAD_SERVER and job.spec.restart_policy == pb.RESTART_POLICY_ALWAYS
    assert len(job.assigned_gpus) == 1  # held while it runs, as a job's
    assert client.capacity().free_gpus == 1
    details = cli("job", "get", "web").output
    assert f"Workload:    server on a port the executor picks, endpoint {job.endpoint}" in details
    table = cli("job", "ls").output
    assert "server" in table and job.endpoint in table

    # Killed: attempt 1 failed as ServerExited, and attempt 2 answers.
    os.kill(int(body.split()[3]), signal.SIGKILL)
    job, body = answering(client, "jobs/web", 2)
    first = job.attempts[0]
    assert (first.state, first.reason) == (FAILED, "ServerExited"), first
    assert "killed by SIGKILL" in first.message

    # Exit status 0 is no success for a server: attempt 3 answers.
    assert fetch(job.endpoint + "/exit") is not None
    job, _ = answering(client, "jobs/web", 3)
    second = job.attempts[1]
    assert (second.state, second.reason, second.exit_code) == (FAILED, "ServerExited", 0), second
    assert "exit status 0" in second.message and "leaving on request" in second.message

    # Cancelled: CANCELLED, no endpoint, nothing answers there any more.
    endpoint = job.endpoint
    client.cancel("jobs/web")
    done = wait_for(client, "jobs/web")
    assert (done.state, done.endpoint, done.attempt) == (CANCELLED, "", 3), done
    assert fetch(endpoint) is None
    assert client.capacity().free_gpus == 2
    assert "endpoint - (not running)" in cli("job", "get", "web").output


def test_a_fixed_port_and_a_server_that_keeps_exiting(stack: Any) -> None:
    client = stack.client
    port = free_port()
    client.submit(server_spec("${PORT}", port=port), "fixed")
    job, body = answering(client, "jobs/fixed", 1)
    assert job.endpoint == f"http://127.0.0.1:{port}" and body.endswith(f"port {port}")
    client.cancel("jobs/fixed")
    assert wait_for(client, "jobs/fixed").state == CANCELLED

    # It exits at once, every time: restarted once (backoff limit 1), then FAILED.
    code = "import sys; print('no model to serve', file=sys.stderr)"
    client.submit(spec(py(code), workload=pb.WORKLOAD_SERVER, backoff_limit=1), "quits")
    done = wait_for(client, "jobs/quits")
    assert (done.state, done.reason, done.endpoint) == (FAILED, "BackoffLimitExceeded", ""), done
    assert [(a.reason, a.exit_code) for a in done.attempts] == [("ServerExited", 0)] * 2
    assert all("no model to serve" in a.message for a in done.attempts)


def test_a_server_that_ran_long_enough_restarts_afresh(make_stack: Any) -> None:
    """Each attempt serves longer than the stable time before it stops: the restarts never use up
    the backoff limit of 1, as a crash loop would."""
    stack = make_stack(server_stable_s=0.5)
    code = "import time; time.sleep(1.0)"
    stack.client.submit(spec(py(code), workload=pb.WORKLOAD_SERVER, backoff_limit=1), "steady")
    deadline = time.monotonic() + 240
    while (job := stack.client.get("jobs/steady")).attempt < 4:
        assert job.state != FAILED, job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert all(a.reason == "ServerExited" for a in job.attempts[:3])
    stack.client.cancel("jobs/steady")
    assert wait_for(stack.client, "jobs/steady").state == CANCELLED


def test_specs_that_cannot_be_a_server_are_refused(stack: Any, cli: Any) -> None:
    client = stack.client
    for fields, words in (
        ({"workers": 2}, "a server runs as one process"),
        ({"port": 70000}, "not a TCP port"),
        ({"port": -1}, "not a TCP port"),
        ({"restart_policy": pb.RESTART_POLICY_NEVER}, "--backoff-limit 0"),
        ({"env_vars": {"PORT": "80"}}, "give the port with --port"),
    ):
        code, message = rpc_error(lambda f=fields: client.submit(server_spec("$PORT", **f)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and words in message, (fields, message)
    code, message = rpc_error(lambda: client.submit(spec(py("pass"), port=8000)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "add --server" in message
    result = cli("job", "submit", "--port", "8000", "--", "python", "-m", "http.server")
    assert result.exit_code == 2 and "add --server" in result.output
    assert not list(client.list("", [], {}))  # nothing was queued


def test_an_old_database_gets_the_endpoint_column(make_stack: Any, tmp_path: Path) -> None:
    """A trainer database made before endpoints existed opens, and its attempts read back."""
    from sqlalchemy import create_engine

    from tunelab.trainer.registry import Registry
    from tunelab.trainer.tables import metadata

    db = tmp_path / "trainer-data" / "trainer" / "state.sqlite"  # where make_stack's trainer keeps it
    db.parent.mkdir(parents=True)
    engine = create_engine(f"sqlite:///{db}")
    metadata.create_all(engine)
    now = time.time()
    old = pb.JobSpec(command=["true"], queue="queues/default")
    registry = Registry(engine)
    registry.insert_job(JobRecord("old", old, "default", 0, "SUCCEEDED", now, now, attempt=1))
    registry.insert_attempt(AttemptRecord("old", 1, "SUCCEEDED", now, exit_code=0, end_time=now))
    engine.dispose()
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE attempts DROP COLUMN endpoint")  # as an earlier release made it

    client = make_stack().client
    job = client.get("jobs/old")
    assert [(a.attempt, a.exit_code) for a in job.attempts] == [(1, 0)] and job.endpoint == ""
    with sqlite3.connect(db) as conn:
        assert "endpoint" in {row[1] for row in conn.execute("PRAGMA table_info(attempts)")}
    client.submit(server_spec("$PORT"), "new")
    answering(client, "jobs/new", 1)
    client.cancel("jobs/new")
    assert wait_for(client, "jobs/new").state == CANCELLED


# -- pieces ---------------------------------------------------------------------------------------
def test_port_substitution_and_how_a_server_ends() -> None:
    assert [with_port(a, "8123") for a in ("$PORT", "${PORT}", "--port=$PORT", "$PORTS", "$$PORT")] == [
        "8123",
        "8123",
        "--port=8123",
        "$PORTS",
        "$8123",
    ]
    assert server_ended(Exit("", "exit status 0", 0)) == ("ServerExited", "the server stopped: exit status 0")
    assert server_ended(Exit("Killed", "killed by SIGKILL")) == (
        "ServerExited",
        "the server stopped: killed by SIGKILL",
    )
    assert server_ended(Exit("Lost", "no report")) == ("Lost", "no report")


def test_the_endpoint_shows_only_while_the_attempt_runs() -> None:
    spec_ = pb.JobSpec(command=["x"], workload=pb.WORKLOAD_SERVER)
    att = AttemptRecord("j", 1, "RUNNING", start_time=time.time(), endpoint="http://127.0.0.1:9")
    running = JobRecord("j", spec_, "default", 0, records.RUNNING, 0.0, 0.0, attempt=1, attempts=(att,))
    assert job_to_pb(running, "local").endpoint == "http://127.0.0.1:9"
    ended = AttemptRecord("j", 1, "FAILED", start_time=0.0, end_time=1.0, endpoint="http://127.0.0.1:9")
    backing_off = JobRecord("j", spec_, "default", 0, records.QUEUED, 0.0, 0.0, attempt=1, attempts=(ended,))
    assert job_to_pb(backing_off, "local").endpoint == ""
