"""Two datasets-service replicas (real processes) on one Postgres and one S3 bucket: each sync runs on
exactly one replica, and the syncs of a replica killed with SIGKILL mid-fetch are finished by the
other once their lease lapses."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from support import S3Server, start_together
from tunelab.cli.clients.datasets import DatasetClient
from tunelab.common.grpc.channel import open_channel
from tunelab.datasets.v1 import datasets_pb2 as pb

LEASE_S = 4.0
SIZE = 512 * 1024
READY = pb.DatasetVersion.STATE_READY


class HeldSource:
    """An HTTP server whose files send half their bytes, then wait until ``release()``; it counts
    the GETs of each path."""

    def __init__(self) -> None:
        self.gets: Counter[str] = Counter()
        self.released = threading.Event()
        source = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                source.gets[self.path] += 1
                body = self.path.encode() * (SIZE // len(self.path) + 1)
                body = body[:SIZE]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(SIZE))
                self.end_headers()
                try:
                    self.wfile.write(body[: SIZE // 2])
                    self.wfile.flush()
                    source.released.wait(60)
                    self.wfile.write(body[SIZE // 2 :])
                except OSError:
                    pass  # the replica fetching it was killed

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def wait_done(client: DatasetClient, ref: str, timeout: float = 120) -> pb.DatasetVersion:
    deadline = time.monotonic() + timeout
    while True:
        version = client.get_version(ref)
        if version.state in (READY, pb.DatasetVersion.STATE_FAILED) or time.monotonic() > deadline:
            return version
        time.sleep(0.2)


@pytest.fixture
def held_source() -> Iterator[HeldSource]:
    source = HeldSource()
    yield source
    source.released.set()
    source.server.shutdown()


@pytest.mark.slow
def test_syncs_run_once_and_a_killed_replicas_syncs_are_finished(
    postgres_url: str, moto_server: S3Server, bucket: str, service_process, held_source, tmp_path: Path
) -> None:
    env = {
        "TUNELAB_STATE_URL": postgres_url,
        "TUNELAB_REPLICA_LEASE_S": str(LEASE_S),
        "TUNELAB_ALLOW_PRIVATE_ADDRESSES": "true",
        **moto_server.env(bucket),
    }
    replicas = [
        service_process(
            "datasets",
            {**env, "TUNELAB_DATA_DIR": str(tmp_path / name), "TUNELAB_REPLICA_ID": name},
            tmp_path / f"{name}.log",
        )
        for name in ("datasets-a", "datasets-b")
    ]
    start_together(replicas)  # on an empty database
    channels = [open_channel(r.address) for r in replicas]
    clients = [DatasetClient(c, tmp_path / f"cache-{i}") for i, c in enumerate(channels)]

    names = [f"ds{i}" for i in range(4)]
    for i, name in enumerate(names):  # each replica runs the syncs of the datasets created through it
        clients[i % 2].create(name, pb.Source(http=pb.HttpSource(url=f"{held_source.url}/{name}.bin")))
    deadline = time.monotonic() + 60
    while set(held_source.gets) != {f"/{n}.bin" for n in names}:  # every fetch is under way, held
        assert time.monotonic() < deadline, held_source.gets
        time.sleep(0.1)
    engine = create_engine(postgres_url)
    with engine.connect() as db:
        owners = dict(db.execute(text("SELECT dataset_id, owner FROM versions")).all())  # type: ignore[arg-type]
    assert owners == {n: ("datasets-a", "datasets-b")[i % 2] for i, n in enumerate(names)}

    replicas[0].kill()  # SIGKILL mid-fetch
    held_source.released.set()
    for name in names:
        final = wait_done(clients[1], f"datasets/{name}/versions/1")
        assert final.state == READY, final.error
        assert final.file_count == 1 and final.size_bytes == SIZE
    with engine.connect() as db:
        versions = db.execute(
            text("SELECT dataset_id, number, owner FROM versions ORDER BY dataset_id")
        ).all()
    engine.dispose()
    assert [tuple(v) for v in versions] == [(n, 1, "") for n in names]  # one version each, released
    # The survivor fetched its own once; the dead replica's were fetched again, once, by the survivor.
    assert held_source.gets == Counter({"/ds0.bin": 2, "/ds1.bin": 1, "/ds2.bin": 2, "/ds3.bin": 1})
    assert "resuming interrupted sync" in (tmp_path / "datasets-b.log").read_text()
    out = tmp_path / "out"
    clients[1].pull("ds2", out)
    assert (out / "ds2.bin").read_bytes()[:8] == b"/ds2.bin"
    for channel in channels:
        channel.close()
