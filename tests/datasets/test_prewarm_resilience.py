"""A prewarm survives a SIGKILL of the service and fails cleanly when the S3 server goes away."""

from __future__ import annotations

import os
import shutil
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tunelab.cli.clients.datasets import DatasetClient
from tunelab.common.grpc.channel import open_channel
from tunelab.datasets.v1 import datasets_pb2 as pb


@pytest.fixture
def file_server(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.slow
def test_sigkill_mid_prewarm_resumes_without_reuploading(
    tmp_path: Path, moto_server, bucket, service_process, file_server
) -> None:
    www, base = file_server
    archive_src = tmp_path / "payload" / "data"
    archive_src.mkdir(parents=True)
    for i in range(120):
        (archive_src / f"part-{i:03d}.bin").write_bytes(os.urandom(256 * 1024))
    shutil.make_archive(str(www / "data"), "gztar", root_dir=tmp_path / "payload")

    env = {
        "TUNELAB_DATA_DIR": str(tmp_path / "svc"),
        "TUNELAB_ALLOW_PRIVATE_ADDRESSES": "true",
        "TUNELAB_TRANSFER_WORKERS": "1",
        **moto_server.env(bucket),
    }
    svc = service_process("datasets", env, tmp_path / "datasets.log").start()
    client = DatasetClient(open_channel(svc.address), tmp_path / "cache")
    client.create("big", pb.Source(http=pb.HttpSource(url=f"{base}/data.tar.gz")))
    for version in client.watch("big@1"):
        if version.state == pb.DatasetVersion.STATE_UPLOADING and version.progress.files_done >= 10:
            break
        assert version.state != pb.DatasetVersion.STATE_READY, "finished before it could be interrupted"
    svc.kill()

    s3 = moto_server.client()
    before = {
        o.object_name: o.last_modified
        for o in s3.list_objects(bucket_name=bucket, prefix="blobs/", recursive=True)
    }
    assert 10 <= len(before) < 120

    svc = service_process("datasets", env, tmp_path / "datasets.log").start()
    client = DatasetClient(open_channel(svc.address), tmp_path / "cache")
    final = list(client.watch("big@1"))[-1]
    assert final.state == pb.DatasetVersion.STATE_READY, final.error
    assert final.file_count == 120
    after = {
        o.object_name: o.last_modified
        for o in s3.list_objects(bucket_name=bucket, prefix="blobs/", recursive=True)
    }
    assert len(after) == 120
    # Blobs stored before the kill were not uploaded again: same objects, same modification times.
    assert {k: after[k] for k in before} == before
    assert final.progress.bytes_uploaded <= (120 - len(before)) * 256 * 1024

    out = tmp_path / "out"
    client.pull("big", out)
    assert (out / "data" / "part-007.bin").read_bytes() == (archive_src / "part-007.bin").read_bytes()


def test_s3_server_going_away_mid_prewarm_fails_with_the_cause(tmp_path: Path) -> None:
    """The object store disappears after the fetch: bounded retries, then FAILED, never READY."""
    from moto.server import ThreadedMotoServer

    from support import free_port
    from tunelab.datasets.server import build_store
    from tunelab.datasets.settings import DatasetSettings
    from tunelab.datasets.sources.spec import HttpSpec

    port = free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    s3.start()
    settings = DatasetSettings(
        data_dir=tmp_path / "svc",
        store_url="s3://vanishing",
        s3_endpoint=f"127.0.0.1:{port}",
        s3_access_key="testing",
        s3_secret_key="testing",
        s3_secure=False,
    )
    store = build_store(settings)

    def fetch_then_lose_store(spec, dest: Path, policy, progress) -> dict[str, str]:
        (dest / "a.bin").write_bytes(os.urandom(1000))
        s3.stop()
        return {"url": spec.url}

    store.syncs.fetch = fetch_then_lose_store
    started = time.monotonic()
    store.create_dataset("gone", HttpSpec(url="http://example.invalid/a.bin"))
    store.wait_idle(120)
    version = store.get_version("gone@1")
    assert version.state == "FAILED"
    assert "cannot reach the object store" in version.error and f"127.0.0.1:{port}" in version.error
    assert time.monotonic() - started < 90
    assert store.registry.get_dataset("gone").latest_version is None
    store.close()
