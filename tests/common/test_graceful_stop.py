"""A service stops when told to, whatever its threads are doing: a sync stuck on a stalled download,
and watchers of something that does not change, neither hold the stop nor keep their threads.

Deadlines here are for hangs, not speed limits: each is many times what the step takes on a loaded
2-core machine, and the behaviour they guard against never finishes at all.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from support import free_port, wait_serving
from tunelab.common.grpc.channel import open_channel
from tunelab.common.grpc.server import GrpcServer
from tunelab.datasets.v1 import datasets_pb2 as dpb
from tunelab.datasets.v1 import datasets_pb2_grpc
from tunelab.trainer.v1 import trainer_pb2 as tpb
from tunelab.trainer.v1 import trainer_pb2_grpc

HANG_S = 120.0


class StalledHandler(BaseHTTPRequestHandler):
    """Promises a large body, sends none of it, and holds the connection until the test ends."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10**9))
        self.end_headers()
        self.wfile.flush()
        self.server.release.wait(HANG_S * 3)  # type: ignore[attr-defined]


@pytest.fixture
def stalled_url() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StalledHandler)
    httpd.daemon_threads = True
    httpd.release = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/data.bin"
    httpd.release.set()  # type: ignore[attr-defined]
    httpd.shutdown()
    httpd.server_close()


def wait_until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + HANG_S
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {HANG_S:.0f}s")
        time.sleep(0.1)
    return value


def test_sigterm_stops_a_service_with_a_stalled_sync_and_a_watcher(tmp_path: Path, stalled_url: str) -> None:
    """The sync's thread is stuck reading (a 10-minute read timeout) and a client watches its version,
    which does not change: SIGTERM still ends the process, with exit code 0, after the grace period."""
    port = free_port()
    env = {
        **os.environ,
        "TUNELAB_DATA_DIR": str(tmp_path / "svc"),
        "TUNELAB_PORT": str(port),
        "TUNELAB_METRICS_PORT": "0",
        "TUNELAB_ALLOW_PRIVATE_ADDRESSES": "true",
        "TUNELAB_READ_TIMEOUT_S": "600",
        "TUNELAB_GRACE_PERIOD_S": "1",
    }
    log = tmp_path / "datasets.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tunelab.datasets"], env=env, stdout=out, stderr=out)
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        wait_serving(f"127.0.0.1:{port}", proc=proc)
        stub = datasets_pb2_grpc.DatasetServiceStub(channel)
        source = dpb.Source(http=dpb.HttpSource(url=stalled_url))
        stub.CreateDataset(dpb.CreateDatasetRequest(dataset_id="stalled", dataset=dpb.Dataset(source=source)))

        def fetching() -> bool:
            version = stub.GetDatasetVersion(dpb.GetDatasetVersionRequest(name="datasets/stalled/versions/1"))
            return version.version.state == dpb.DatasetVersion.STATE_FETCHING

        wait_until(fetching, "the sync started fetching")
        watch = stub.WatchDatasetVersion(dpb.WatchDatasetVersionRequest(name="datasets/stalled/versions/1"))
        assert next(watch).version.state == dpb.DatasetVersion.STATE_FETCHING

        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(HANG_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the service did not exit {HANG_S:.0f}s after SIGTERM:\n{log.read_text()[-3000:]}")
        assert code == 0, log.read_text()[-3000:]
        assert '"message": "datasets stopped"' in log.read_text()
    finally:
        channel.close()
        proc.kill()
        proc.wait()


def finished(server: GrpcServer, method: str) -> float:
    """How many calls of ``method`` have ended (the interceptor times each one when it ends)."""
    labels = {"service": server.name, "method": method}
    return server.registry.get_sample_value("tunelab_grpc_request_duration_seconds_count", labels) or 0.0


def abandon(call: Any) -> Any:
    """Reads the first message of a server stream, then hangs up as a client that goes away does."""
    first = next(call)
    call.cancel()
    return first


def test_an_abandoned_dataset_watch_frees_its_thread(tmp_path: Path) -> None:
    """The version waits for an upload that never comes: the watch's handler ends once the client
    hangs up (it used to poll on, holding one of the server's threads, until the version changed)."""
    from tunelab.datasets.server import build_server
    from tunelab.datasets.settings import DatasetSettings

    server, _ = build_server(DatasetSettings(data_dir=tmp_path / "svc", port=0, metrics_port=0))
    server.start()
    channel = open_channel(server.address)
    try:
        stub = datasets_pb2_grpc.DatasetServiceStub(channel)
        dataset = dpb.Dataset(source=dpb.Source(upload=dpb.UploadSource()))
        stub.CreateDataset(dpb.CreateDatasetRequest(dataset_id="pending", dataset=dataset))
        content = b"never sent"
        entry = dpb.DatasetFile(path="a.txt", size=len(content), sha256=hashlib.sha256(content).hexdigest())
        stub.StartUpload(dpb.StartUploadRequest(parent="datasets/pending", files=[entry]))
        for _ in range(3):
            call = stub.WatchDatasetVersion(
                dpb.WatchDatasetVersionRequest(name="datasets/pending/versions/1"), timeout=HANG_S
            )
            assert abandon(call).version.state == dpb.DatasetVersion.STATE_UPLOADING
        wait_until(lambda: finished(server, "WatchDatasetVersion") == 3, "the watches ended")
    finally:
        channel.close()
        server.stop(0)


def test_abandoned_job_watches_and_log_follows_free_their_threads(tmp_path: Path) -> None:
    """A queued job whose scheduler is not running never changes: WatchJob ends once its client
    hangs up, and following its logs ends once the caller is no longer active."""
    from tunelab.trainer.server import build_server
    from tunelab.trainer.settings import TrainerSettings

    nowhere = f"127.0.0.1:{free_port()}"
    settings = TrainerSettings(
        data_dir=tmp_path / "svc", port=0, metrics_port=0, datasets_addr=nowhere, environments_addr=nowhere
    )
    server, trainer = build_server(settings)  # the scheduler is not started: the job stays QUEUED
    server.start()
    channel = open_channel(server.address)
    try:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        job = tpb.Job(spec=tpb.JobSpec(command=["true"]))
        stub.CreateJob(tpb.CreateJobRequest(job_id="waiting", job=job))
        watch = stub.WatchJob(tpb.WatchJobRequest(name="jobs/waiting"), timeout=HANG_S)
        assert abandon(watch).job.state == tpb.Job.STATE_QUEUED
        wait_until(lambda: finished(server, "WatchJob") == 1, "the job watch ended")

        # No log line ever comes, so no message could show that a StreamJobLogs handler has started
        # before its client hangs up: the loop it runs is driven directly here.
        gone, waiting = threading.Event(), threading.Event()
        asked = [0]

        def active() -> bool:
            asked[0] += 1
            if asked[0] >= 2:  # it has waited for lines once and is asking again
                waiting.set()
            return not gone.is_set()

        batches: list[object] = []
        follower = threading.Thread(
            target=lambda: batches.extend(trainer.jobs.logs("waiting", follow=True, active=active))
        )
        follower.start()
        assert waiting.wait(HANG_S), "following the logs did not start"
        gone.set()
        follower.join(HANG_S)
        assert not follower.is_alive(), "following the logs went on after the caller left"
        assert batches == []
    finally:
        channel.close()
        server.stop(0)
