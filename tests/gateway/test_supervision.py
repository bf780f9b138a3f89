"""Embedded engines are supervised: one killed with SIGKILL is started again and the deployment
comes back READY, saying meanwhile what happened (answering 503 with Retry-After), and showing
the restart afterwards (GetDeployment, `tunelab model get`); one that keeps crashing while it
loads ends FAILED after its tries with its last words, and the name can be deployed again."""

from __future__ import annotations

import re
import signal
import stat
import sys
import time
from pathlib import Path

import psutil
from typer.testing import CliRunner

from tunelab.cli.main import app
from tunelab.gateway.v1 import gateway_pb2 as pb

KILLED = r"engine exited with signal 9 \(SIGKILL\) after \d+ s"


def embedded(base: Path) -> pb.Deployment:
    return pb.Deployment(
        model_name="tiny",
        base_model=pb.ModelSource(path=str(base)),
        upstream=pb.Upstream(embedded=pb.EmbeddedUpstream(device="cpu", max_batch_size=2)),
    )


def engines() -> list[psutil.Process]:
    """The engines this process's gateway runs now."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "tunelab.engine" in p.cmdline() and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def get(gut, name: str) -> pb.Deployment:
    return gut.stub.GetDeployment(pb.GetDeploymentRequest(name=f"deployments/{name}")).deployment


def wait_for(gut, name: str, done, what: str, timeout: float = 180) -> pb.Deployment:
    deadline = time.monotonic() + timeout
    while not done(d := get(gut, name)):
        assert time.monotonic() < deadline, f"{what}: {d}"
        time.sleep(0.1)
    return d


def test_a_killed_engine_is_restarted(make_gateway, tiny_model, monkeypatch) -> None:
    base, _ = tiny_model
    gut = make_gateway(api_key_auth="off", restart_backoff_s=5)
    assert gut.deploy("tiny", embedded(base), timeout=180).state == pb.Deployment.STATE_READY
    (first,) = engines()

    first.send_signal(signal.SIGKILL)
    # (A check as it dies may see its connection reset first.)
    down = wait_for(gut, "tiny", lambda d: "engine exited" in d.error, "not noticed")
    assert down.state == pb.Deployment.STATE_DEGRADED
    assert re.fullmatch(f"replica 0: {KILLED}; restarting in 5 s \\(restart 1\\)", down.error), down.error
    assert down.replica_statuses[0].restarts == 1
    with gut.http() as c:  # nothing serves it for 5 s at least
        r = c.post("/v2/models/tiny/generate", json={"text_input": "hello"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text

    d = wait_for(gut, "tiny", lambda d: d.state == pb.Deployment.STATE_READY, "not back")
    replica = d.replica_statuses[0]
    assert replica.healthy and replica.restarts == 1 and d.error == ""
    assert re.fullmatch(KILLED, replica.restart_reason), replica.restart_reason
    (second,) = engines()
    assert second.pid != first.pid
    with gut.http() as c:
        r = c.post("/v2/models/tiny/generate", json={"text_input": "hello"})
    assert r.status_code == 200 and r.json()["text_output"].startswith("hello"), r.text

    monkeypatch.setenv("TUNELAB_GATEWAY_ADDR", gut.gateway.grpc.address)
    monkeypatch.setenv("TUNELAB_CONFIG", "/nonexistent/config.yaml")
    shown = CliRunner().invoke(app, ["model", "get", "tiny"])
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.output.splitlines() if x.startswith("replica 0: "))
    assert re.search(f"healthy \\(restarts: 1; last: {KILLED}\\)$", line), shown.output

    # Killed again, then deleted while it waits to be started again: nothing is left running,
    # and the name deploys again.
    second.send_signal(signal.SIGKILL)
    wait_for(gut, "tiny", lambda d: d.state != pb.Deployment.STATE_READY, "not noticed")
    gut.stub.DeleteDeployment(pb.DeleteDeploymentRequest(name="deployments/tiny"))
    time.sleep(6)  # past the restart that was due
    assert engines() == []
    again = gut.deploy("tiny", embedded(base), timeout=180)
    assert again.state == pb.Deployment.STATE_READY and again.replica_statuses[0].restarts == 0, again
    assert len(engines()) == 1


def crashing_python(root: Path) -> Path:
    """A Python for the engines that dies while loading (status 1, its last words on stdout), and
    counts its starts; once ``root/healthy`` exists it is the real one."""
    script = root / "python"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{root}/healthy" ]; then exec "{sys.executable}" "$@"; fi\n'
        f'echo start >> "{root}/starts"\n'
        "echo 'Loading weights:   0%|          | 0/21'\n"
        'echo \'{"level": "error", "message": "cannot load: RuntimeError: out of memory"}\'\n'
        "exit 1\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_an_engine_that_keeps_crashing_while_loading_fails_then_deploys_again(
    make_gateway, tiny_model, tmp_path
) -> None:
    base, _ = tiny_model
    python = crashing_python(tmp_path)
    gut = make_gateway(api_key_auth="off", engine_python=str(python), restart_backoff_s=0.2)
    d = gut.deploy("tiny", embedded(base), timeout=120)
    assert d.state == pb.Deployment.STATE_FAILED
    assert d.error.startswith(
        "replica 0: engine exited with code 1 while loading: cannot load: RuntimeError: out of memory (log: "
    ), d.error
    assert d.error.endswith("; gave up after 3 tries"), d.error
    assert (tmp_path / "starts").read_text().count("start") == 3

    # Creating it again replaces the FAILED deployment (a crashed engine does not hold its name).
    (tmp_path / "healthy").touch()
    gut.stub.CreateDeployment(pb.CreateDeploymentRequest(deployment_id="tiny", deployment=embedded(base)))
    d = gut.wait("tiny", timeout=180)
    assert d.state == pb.Deployment.STATE_READY, d.error
    with gut.http() as c:
        assert c.post("/v2/models/tiny/generate", json={"text_input": "hello"}).status_code == 200
