"""Push, pull, versions, watch and files through the real datasets service, on both backends."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from tunelab.common.storage.materialize import MARKER
from tunelab.datasets.v1 import datasets_pb2 as pb


def make_tree(root: Path, big: int = 3_000_000) -> None:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(big))
    (root / "sub" / "deep" / "c.json").write_text('{"x": 1}\n')
    (root / "dup.txt").write_text("hello\n")  # same content as a.txt: stored once
    run = root / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o755)


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def test_push_pull_roundtrip(datasets, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    c = datasets.client
    c.create("adv", pb.Source(upload=pb.UploadSource()), description="sample")
    v1 = c.push("adv", src)
    assert v1.name == "datasets/adv/versions/1"
    assert v1.state == pb.DatasetVersion.STATE_READY
    assert v1.file_count == 5 and v1.size_bytes == sum(len(b) for b in tree(src).values())

    out = tmp_path / "out"
    first = c.pull("adv", out)
    assert tree(out) == tree(src)
    assert os.access(out / "run.sh", os.X_OK)
    assert first.bytes_fetched == first.bytes - len("hello\n")  # dup.txt came from the cache

    second = c.pull("adv@1", tmp_path / "out2")
    assert second.bytes_fetched == 0  # every blob came from the local cache
    assert tree(tmp_path / "out2") == tree(src)

    ds = c.get("adv")
    assert ds.latest_version == "datasets/adv/versions/1" and ds.version_count == 1
    assert [f.path for f in c.list_files("adv@latest")] == [
        "a.txt",
        "dup.txt",
        "run.sh",
        "sub/b.bin",
        "sub/deep/c.json",
    ]


def test_unchanged_push_uploads_nothing_and_changed_push_only_the_change(datasets, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src)
    c = datasets.client
    c.create("d", pb.Source(upload=pb.UploadSource()))
    c.push("d", src)
    start = c.stub.StartUpload(
        pb.StartUploadRequest(
            parent="datasets/d",
            files=[
                pb.DatasetFile(path=f.path, size=f.size, sha256=f.sha256, mode=f.mode)
                for f in c.manifest_of(src).files
            ],
        )
    )
    assert list(start.missing_sha256) == []
    (src / "a.txt").write_text("changed\n")
    start2 = c.stub.StartUpload(
        pb.StartUploadRequest(
            parent="datasets/d",
            files=[
                pb.DatasetFile(path=f.path, size=f.size, sha256=f.sha256, mode=f.mode)
                for f in c.manifest_of(src).files
            ],
        )
    )
    assert len(start2.missing_sha256) == 1
    v = c.push("d", src)
    assert v.name.endswith("/versions/4")
    old = tmp_path / "old"
    c.pull("d@1", old)
    assert (old / "a.txt").read_text() == "hello\n"
    new = tmp_path / "new"
    c.pull("d", new)
    assert (new / "a.txt").read_text() == "changed\n"


def test_pull_replaces_a_previous_pull_atomically_and_refuses_foreign_dirs(datasets, tmp_path: Path) -> None:
    c = datasets.client
    src = tmp_path / "src"
    make_tree(src, big=1000)
    c.create("d", pb.Source(upload=pb.UploadSource()))
    c.push("d", src)
    out = tmp_path / "out"
    c.pull("d", out)
    (src / "new.txt").write_text("new")
    c.push("d", src)
    c.pull("d", out)
    assert (out / "new.txt").read_text() == "new"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(Exception, match="not empty and was not made by tunelab"):
        c.pull("d", foreign)
    assert (foreign / "mine.txt").read_text() == "keep me"


def test_watch_streams_until_ready_and_versions_list_pages(datasets, tmp_path: Path) -> None:
    c = datasets.client
    src = tmp_path / "src"
    make_tree(src, big=1000)
    c.create("d", pb.Source(upload=pb.UploadSource()))
    for _ in range(3):
        c.push("d", src)
    states = [v.state for v in c.watch("d@2")]
    assert states == [pb.DatasetVersion.STATE_READY]
    resp = c.stub.ListDatasetVersions(pb.ListDatasetVersionsRequest(parent="datasets/d", page_size=2))
    assert [v.name for v in resp.versions] == ["datasets/d/versions/1", "datasets/d/versions/2"]
    rest = c.stub.ListDatasetVersions(
        pb.ListDatasetVersionsRequest(parent="datasets/d", page_size=2, page_token=resp.next_page_token)
    )
    assert [v.name for v in rest.versions] == ["datasets/d/versions/3"]
    c.delete_version("d@2")
    assert [v.name for v in c.list_versions("d")] == ["datasets/d/versions/1", "datasets/d/versions/3"]
    with pytest.raises(grpc.RpcError) as err:
        c.get_version("d@2")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_delete_then_gc_reclaims_only_unreferenced_blobs(datasets, tmp_path: Path) -> None:
    c = datasets.client
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "shared.txt").write_text("shared")
    (a / "only-a.txt").write_text("only in a")
    (b / "shared.txt").write_text("shared")
    c.create("a", pb.Source(upload=pb.UploadSource()))
    c.create("b", pb.Source(upload=pb.UploadSource()))
    c.push("a", a)
    c.push("b", b)
    assert c.gc(dry_run=True).blobs_deleted == 0
    c.delete("a")
    dry = c.gc(dry_run=True)
    assert (dry.blobs_deleted, dry.bytes_deleted) == (1, len("only in a"))
    assert c.gc(dry_run=False).blobs_deleted == 1
    assert c.gc(dry_run=False).blobs_deleted == 0
    out = tmp_path / "out"
    c.pull("b", out)  # the shared blob survived
    assert (out / "shared.txt").read_text() == "shared"
    with pytest.raises(grpc.RpcError) as err:
        c.get("a")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
