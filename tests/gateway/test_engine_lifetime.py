"""An embedded engine lives no longer than its gateway (``python -m tunelab.gateway`` killed with
SIGKILL takes its engines with it), and the service log is not filled with a line per health check."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import psutil
import pytest

from tunelab.common.grpc.channel import open_channel
from tunelab.gateway.engines import EngineLauncher, free_port
from tunelab.gateway.v1 import gateway_pb2 as pb
from tunelab.gateway.v1 import gateway_pb2_grpc

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited, not yet reaped by init
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@linux_only
def test_engine_dies_with_a_killed_gateway(tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    base, _ = tiny_model
    port = free_port()
    env = {
        **os.environ,
        "TUNELAB_DATA_DIR": str(tmp_path / "gw"),
        "TUNELAB_PORT": str(port),
        "TUNELAB_HTTP_PORT": str(free_port()),
        "TUNELAB_METRICS_PORT": "0",
        "TUNELAB_HEALTH_INTERVAL_S": "0.5",
    }
    env.pop("TUNELAB_AUTH_TOKEN", None)
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "tunelab.gateway"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    engines: list[int] = []
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        dep = pb.Deployment(
            model_name="tiny",
            base_model=pb.ModelSource(path=str(base)),
            upstream=pb.Upstream(embedded=pb.EmbeddedUpstream(device="cpu", max_batch_size=2)),
        )
        stub.CreateDeployment(pb.CreateDeploymentRequest(deployment_id="tiny", deployment=dep))
        for resp in stub.WatchDeployment(pb.WatchDeploymentRequest(name="deployments/tiny"), timeout=180):
            if resp.deployment.state not in (pb.Deployment.STATE_PENDING, pb.Deployment.STATE_LOADING):
                assert resp.deployment.state == pb.Deployment.STATE_READY, resp.deployment.error
                break
        engines = [p.pid for p in psutil.Process(gateway.pid).children(recursive=True)]
        assert len(engines) == 1, log.read_text(errors="replace")[-3000:]
        assert "tunelab.engine" in " ".join(psutil.Process(engines[0]).cmdline())

        gateway.send_signal(signal.SIGKILL)
        gateway.wait(30)
        assert wait_gone(engines[0], 60), "the engine outlived its gateway"
    finally:
        channel.close()
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()
        for pid in engines:  # never leave one behind, whatever failed above
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


@linux_only
def test_an_engine_outlives_the_thread_that_started_it(tmp_path: Path) -> None:
    """The parent-death signal follows the thread that forked; loads run on pool threads."""
    launcher = EngineLauncher(sys.executable, tmp_path)
    marker = tmp_path / "running"
    script = f"import pathlib, time; pathlib.Path({str(marker)!r}).touch(); time.sleep(120)"
    started: list[subprocess.Popen[bytes]] = []
    thread = threading.Thread(
        target=lambda: started.append(launcher.spawn([sys.executable, "-c", script], tmp_path / "x.log"))
    )
    thread.start()
    thread.join(60)
    proc = started[0]
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "x.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(1)
    finally:
        proc.kill()
        proc.wait()


def test_http_client_requests_are_not_logged_at_info(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import http.server, logging, threading
        import httpx
        from tunelab.common.logging import setup_logging

        setup_logging("info", service="gateway")
        server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        httpx.get(f"http://127.0.0.1:{server.server_port}/health")
        logging.getLogger("tunelab.gateway.deployments").info("replica healthy")
        server.shutdown()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "replica healthy" in done.stdout
    assert "HTTP Request" not in done.stdout and '"logger": "httpx"' not in done.stdout
