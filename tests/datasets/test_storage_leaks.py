"""Nothing an interrupted upload, a refused source or a refused push leaves behind outlives it: no
temporary blobs, no version stuck UPLOADING that pins its blobs, no dataset that blocks its name."""

from __future__ import annotations

import hashlib
import os
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from support import free_port
from tunelab.cli.clients.datasets import DatasetClient
from tunelab.common.grpc.channel import open_channel
from tunelab.datasets.v1 import datasets_pb2 as pb

FAILED = pb.DatasetVersion.STATE_FAILED
READY = pb.DatasetVersion.STATE_READY
UPLOADING = pb.DatasetVersion.STATE_UPLOADING


def rpc_error(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".tmp-*"))


# -- kill -9 in the middle of an upload ---------------------------------------------------------
def test_sigkill_mid_upload_leaves_no_temporary_blob_and_no_pinned_version(
    tmp_path: Path, service_process
) -> None:
    env = {"TUNELAB_DATA_DIR": str(tmp_path / "svc"), "TUNELAB_GC_GRACE_S": "0"}
    store = tmp_path / "svc" / "store"
    svc = service_process("datasets", env, tmp_path / "datasets.log").start()
    client = DatasetClient(open_channel(svc.address), tmp_path / "cache")
    client.create("up", pb.Source(upload=pb.UploadSource()))

    small, big = b"done before the kill\n", os.urandom(3 * 1024 * 1024)
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in (("small", small), ("big", big))}
    start = client.stub.StartUpload(
        pb.StartUploadRequest(
            parent="datasets/up",
            files=[
                pb.DatasetFile(path="small.txt", size=len(small), sha256=sha["small"]),
                pb.DatasetFile(path="big.bin", size=len(big), sha256=sha["big"]),
            ],
        )
    )
    gate = threading.Event()

    def messages() -> Iterator[pb.UploadBlobsRequest]:
        yield pb.UploadBlobsRequest(sha256=sha["small"], size=len(small), data=small)
        yield pb.UploadBlobsRequest(sha256=sha["big"], size=len(big), data=big[: 1024 * 1024])
        gate.wait(120)  # the rest of the big blob never comes: the service dies first

    call = client.stub.UploadBlobs.future(messages())
    small_blob = store / "blobs" / "sha256" / sha["small"][:2] / sha["small"]
    wait_for(lambda: small_blob.exists() and temp_files(store / "blobs"), "the big blob's temporary file")
    svc.kill()
    gate.set()
    assert isinstance(call.exception(timeout=60), grpc.RpcError)
    [left] = temp_files(store / "blobs")
    # The kill was a while ago; a write another replica is making right now must survive.
    long_ago = time.time() - 7200
    os.utime(left, (long_ago, long_ago))
    in_progress = store / "blobs" / "sha256" / ".tmp-another-replica"
    in_progress.write_bytes(b"still being written")

    svc = service_process("datasets", env, tmp_path / "datasets.log").start()
    client = DatasetClient(open_channel(svc.address), tmp_path / "cache")
    version = client.get_version(start.version.name)
    assert version.state == FAILED
    assert version.error == "interrupted: the service restarted during the upload"
    wait_for(lambda: not left.exists(), "the stale temporary file to be removed at start")
    assert in_progress.exists()

    # The failed upload no longer pins what it stored: garbage collection frees it.
    result = client.gc(dry_run=False)
    assert result.blobs_deleted == 1 and not small_blob.exists()
    assert in_progress.exists()
    code, details = rpc_error(
        lambda: client.stub.CommitDatasetVersion(pb.CommitDatasetVersionRequest(name=start.version.name))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "FAILED" in details


@pytest.mark.parametrize("datasets", ["local"], indirect=True)  # S3: test_sweep_aborts_stale_multipart…
def test_gc_removes_stale_temporary_blobs_and_keeps_fresh_ones(datasets) -> None:
    store = datasets.store.blobs.store
    folder = store.root / "blobs" / "sha256" / "ab"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".tmp-killed", folder / ".tmp-writing"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y")
    long_ago = time.time() - 7200
    os.utime(stale, (long_ago, long_ago))
    assert datasets.client.gc(dry_run=True).blobs_deleted == 1 and stale.exists()
    result = datasets.client.gc(dry_run=False)
    assert (result.blobs_deleted, result.bytes_deleted) == (1, 100)
    assert not stale.exists() and fresh.exists()


def test_sweep_aborts_stale_multipart_uploads(moto_server, bucket) -> None:
    from tunelab.common.storage.s3 import S3Store

    s3 = moto_server.client()
    store = S3Store(s3, bucket, prefix="tl")
    upload_id = s3._create_multipart_upload(bucket, "tl/blobs/sha256/ab/abc", {})
    s3._upload_part(bucket, "tl/blobs/sha256/ab/abc", b"p" * (5 * 1024 * 1024), None, upload_id, 1)
    outside = s3._create_multipart_upload(bucket, "other/key", {})  # not this store's prefix

    assert store.sweep_partial(time.time() - 600) == (0, 0)  # touched just now: maybe still written
    assert store.sweep_partial(time.time() + 60, dry_run=True) == (1, 5 * 1024 * 1024)
    assert store.sweep_partial(time.time() + 60) == (1, 5 * 1024 * 1024)
    left = s3._list_multipart_uploads(bucket).uploads
    assert [(u.object_name, u.upload_id) for u in left] == [("other/key", outside)]
    s3._abort_multipart_upload(bucket, "other/key", outside)


# -- refused sources and pushes leave the name free ----------------------------------------------
@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[DatasetClient]:
    """The datasets service with the SSRF guard on, as deployed."""
    from tunelab.datasets.server import build_server
    from tunelab.datasets.settings import DatasetSettings

    settings = DatasetSettings(data_dir=tmp_path / "svc", port=0, metrics_port=0)
    server, _ = build_server(settings)
    server.start()
    channel = open_channel(server.address)
    yield DatasetClient(channel, tmp_path / "cache")
    channel.close()
    server.stop(1)


@pytest.mark.parametrize(
    "source",
    [
        pb.Source(http=pb.HttpSource(url="http://127.0.0.1:{port}/data.tar.gz")),
        pb.Source(http=pb.HttpSource(url="http://169.254.169.254/latest/meta-data/")),
        pb.Source(git=pb.GitSource(url="http://[::1]:{port}/repo.git")),
        pb.Source(s3=pb.S3Source(bucket="b", endpoint="127.0.0.1:{port}")),
    ],
    ids=["http-loopback", "http-metadata", "git-loopback", "s3-loopback"],
)
def test_a_source_the_guard_refuses_is_refused_at_create(guarded, source: pb.Source) -> None:
    kind = source.WhichOneof("kind")
    field = getattr(source, kind)
    for name in ("url", "endpoint"):
        if hasattr(field, name):
            setattr(field, name, getattr(field, name).format(port=free_port()))
    code, details = rpc_error(lambda: guarded.create("refused", source))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "TUNELAB_ALLOW_PRIVATE_ADDRESSES" in details
    code, _ = rpc_error(lambda: guarded.get("refused"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert list(guarded.list()) == []


def test_a_dataset_whose_only_version_failed_does_not_keep_its_name(datasets, www) -> None:
    root, base = www
    (root / "bad.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 this is no archive")
    c = datasets.client
    c.create("adv", pb.Source(http=pb.HttpSource(url=f"{base}/bad.tar.gz")))
    assert list(c.watch("adv@1"))[-1].state == FAILED

    good = root / "payload"
    good.mkdir()
    (good / "train.json").write_text('{"content": "a", "summary": "b"}\n')
    with tarfile.open(root / "good.tar.gz", "w:gz") as tar:
        tar.add(good / "train.json", arcname="train.json")
    created = c.create("adv", pb.Source(http=pb.HttpSource(url=f"{base}/good.tar.gz")))
    assert created.source.http.url.endswith("good.tar.gz")
    [version] = c.list_versions("adv")
    final = list(c.watch(version.name))[-1]
    assert final.state == READY, final.error

    # A dataset that has had a good version keeps its name, failed versions or not.
    (root / "good.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 broken now")
    assert list(c.watch(c.sync("adv").name))[-1].state == FAILED
    code, details = rpc_error(lambda: c.create("adv", pb.Source(http=pb.HttpSource(url=f"{base}/x"))))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "'adv' exists already" in details


def test_a_push_refused_before_any_data_leaves_no_dataset(
    datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunelab.cli.main import app

    monkeypatch.setenv("TUNELAB_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("TUNELAB_CACHE_DIR", str(tmp_path / "cli-cache"))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine\n")
    (folder / "back\\slash.txt").write_text("a name the service refuses\n")
    addr = ("--datasets-addr", datasets.address)

    result = CliRunner().invoke(app, [*addr, "dataset", "create", "pushed", "--source", str(folder)])
    assert result.exit_code != 0 and "must be relative" in result.output
    code, _ = rpc_error(lambda: datasets.client.get("pushed"))
    assert code == grpc.StatusCode.NOT_FOUND

    (folder / "back\\slash.txt").unlink()
    result = CliRunner().invoke(app, [*addr, "dataset", "create", "pushed", "--source", str(folder)])
    assert result.exit_code == 0, result.output
    assert "pushed@1 is READY: 1 files" in result.output
