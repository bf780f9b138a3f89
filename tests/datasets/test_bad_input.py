"""Bad input gets a clear error naming the field, file or line, and never corrupts state."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import pytest

from tunelab.common.errors import DataLoss
from tunelab.datasets.v1 import datasets_pb2 as pb


def code_and_details(fn):
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()


@pytest.mark.parametrize("name", ["Bad_Name", "-x", "x-", "a" * 64, "", "with space", "../up"])
def test_invalid_dataset_names(datasets, name: str) -> None:
    code, details = code_and_details(
        lambda: datasets.client.create(name, pb.Source(upload=pb.UploadSource()))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "dataset_id" in details and "lower-case letters" in details


def test_duplicate_dataset_name(datasets) -> None:
    datasets.client.create("dup", pb.Source(empty=pb.EmptySource()))
    code, details = code_and_details(
        lambda: datasets.client.create("dup", pb.Source(upload=pb.UploadSource()))
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS and "'dup' exists already" in details


def test_missing_source(datasets) -> None:
    code, details = code_and_details(lambda: datasets.client.create("nosrc", pb.Source()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "dataset.source" in details


def test_sync_of_an_upload_dataset_is_refused(datasets) -> None:
    datasets.client.create("up", pb.Source(upload=pb.UploadSource()))
    code, details = code_and_details(lambda: datasets.client.sync("up"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "push" in details


@pytest.mark.parametrize(
    ("path", "why"),
    [("/etc/passwd", "must be relative"), ("a/../../x", "must be relative"), ("./a", "must be relative")],
)
def test_upload_manifest_with_escaping_paths(datasets, path: str, why: str) -> None:
    datasets.client.create("m", pb.Source(upload=pb.UploadSource()))
    req = pb.StartUploadRequest(
        parent="datasets/m", files=[pb.DatasetFile(path=path, size=1, sha256="a" * 64)]
    )
    code, details = code_and_details(lambda: datasets.client.stub.StartUpload(req))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and why in details and path in details
    assert list(datasets.client.list_versions("m")) == []  # nothing half-made


def test_upload_manifest_with_duplicate_paths_and_bad_hash(datasets) -> None:
    datasets.client.create("m", pb.Source(upload=pb.UploadSource()))
    f = pb.DatasetFile(path="a", size=1, sha256="b" * 64)
    code, details = code_and_details(
        lambda: datasets.client.stub.StartUpload(pb.StartUploadRequest(parent="datasets/m", files=[f, f]))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "duplicate path 'a'" in details
    bad = pb.DatasetFile(path="a", size=1, sha256="XYZ")
    code, details = code_and_details(
        lambda: datasets.client.stub.StartUpload(pb.StartUploadRequest(parent="datasets/m", files=[bad]))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a lower-case hex sha256" in details


def test_blob_that_does_not_match_its_hash_is_refused_and_commit_waits_for_it(datasets) -> None:
    c = datasets.client
    c.create("m", pb.Source(upload=pb.UploadSource()))
    data = b"real content"
    sha = hashlib.sha256(data).hexdigest()
    start = c.stub.StartUpload(
        pb.StartUploadRequest(
            parent="datasets/m", files=[pb.DatasetFile(path="f.txt", size=len(data), sha256=sha)]
        )
    )
    assert list(start.missing_sha256) == [sha]
    lie = iter([pb.UploadBlobsRequest(sha256=sha, size=len(data), data=b"other content")])
    code, details = code_and_details(lambda: c.stub.UploadBlobs(lie))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and sha in details
    commit = pb.CommitDatasetVersionRequest(name=start.version.name)
    code, details = code_and_details(lambda: c.stub.CommitDatasetVersion(commit))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not in the store" in details
    assert c.get_version(start.version.name).state == pb.DatasetVersion.STATE_UPLOADING
    c.stub.UploadBlobs(iter([pb.UploadBlobsRequest(sha256=sha, size=len(data), data=data)]))
    assert c.stub.CommitDatasetVersion(commit).version.state == pb.DatasetVersion.STATE_READY


def test_corrupted_blob_is_detected_at_materialize(datasets, tmp_path: Path) -> None:
    c = datasets.client
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"x" * 5000)
    c.create("m", pb.Source(upload=pb.UploadSource()))
    c.push("m", src)
    sha = hashlib.sha256(b"x" * 5000).hexdigest()
    # Damage the stored blob behind the service's back (same size, different bytes).
    datasets.store.blobs.store.put_bytes(f"blobs/sha256/{sha[:2]}/{sha}", b"y" * 5000)
    with pytest.raises(DataLoss, match=r"datasets/m/versions/1:weights.bin: blob .* is corrupt"):
        c.pull("m", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "client-cache" / "blobs").rglob(sha))  # never cached


def test_unknown_version_and_bad_refs(datasets) -> None:
    c = datasets.client
    c.create("v", pb.Source(upload=pb.UploadSource()))
    code, details = code_and_details(lambda: c.get_version("v@7"))
    assert code == grpc.StatusCode.NOT_FOUND and "no version 7" in details
    code, details = code_and_details(lambda: c.get_version("v"))
    assert code == grpc.StatusCode.NOT_FOUND and "no READY version" in details
    code, details = code_and_details(lambda: c.get_version("v@-1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def write_lines(path: Path, rows: list[object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)
    )


def test_advertisegen_transform(datasets, tmp_path: Path) -> None:
    c = datasets.client
    src = tmp_path / "adv" / "AdvertiseGen"
    rows = [{"content": "类型#上衣*材质#牛仔布*颜色#白色", "summary": "简约而不简单的牛仔外套"}] * 3
    write_lines(src / "train.json", rows)
    write_lines(src / "dev.json", rows[:1])
    c.create("advertisegen", pb.Source(upload=pb.UploadSource()))
    c.push("advertisegen", tmp_path / "adv")
    v = c.transform("advertisegen", "advertisegen-to-conversations", "advertisegen-fix")
    assert v.state == pb.DatasetVersion.STATE_READY and v.name == "datasets/advertisegen-fix/versions/1"
    out = tmp_path / "fix"
    c.pull("advertisegen-fix", out)
    lines = (out / "train.json").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert json.loads(lines[0]) == {
        "conversations": [
            {"role": "user", "content": "类型#上衣*材质#牛仔布*颜色#白色"},
            {"role": "assistant", "content": "简约而不简单的牛仔外套"},
        ]
    }
    assert "类型" in lines[0]  # ensure_ascii=False, as the original
    assert c.get("advertisegen-fix").source.WhichOneof("kind") == "dataset"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "train.json line 2: not JSON"),
        ('{"content": "x"}', "train.json line 2: field 'summary' is missing"),
        ("[1, 2]", "train.json line 2: expected a JSON object"),
    ],
)
def test_advertisegen_transform_names_file_and_line(
    datasets, tmp_path: Path, line: str, message: str
) -> None:
    c = datasets.client
    write_lines(tmp_path / "adv" / "train.json", [{"content": "a", "summary": "b"}, line])
    c.create("advbad", pb.Source(upload=pb.UploadSource()))
    c.push("advbad", tmp_path / "adv")
    code, details = code_and_details(
        lambda: c.transform("advbad", "advertisegen-to-conversations", "advbad-fix")
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details
    versions = list(c.list_versions("advbad-fix"))
    assert [v.state for v in versions] == [pb.DatasetVersion.STATE_FAILED]


def test_unknown_transform(datasets, tmp_path: Path) -> None:
    c = datasets.client
    code, details = code_and_details(lambda: c.transform("x", "nope", "y"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "advertisegen-to-conversations" in details
