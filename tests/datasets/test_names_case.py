"""Dataset names are read without regard to case: ``AdvertiseGen`` is stored as ``advertisegen``
with its spelling kept as the display name; a name that does not exist suggests close ones; a
database written before display names existed gains the column when the service starts."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import grpc
import pytest

from tunelab.datasets.v1 import datasets_pb2 as pb

ROWS = b'{"content": "type#dress", "summary": "a dress"}\n'


def rpc_error(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()


def test_a_mixed_case_name_is_stored_lower_case_and_found_in_any_case(datasets, tmp_path: Path) -> None:
    c = datasets.client
    created = c.create("AdvertiseGen", pb.Source(upload=pb.UploadSource()))
    assert (created.name, created.display_name) == ("datasets/advertisegen", "AdvertiseGen")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_bytes(ROWS)
    assert c.push("ADVERTISEGEN", tmp_path / "data").name == "datasets/advertisegen/versions/1"

    for spelled in ("AdvertiseGen", "advertisegen", "datasets/AdvertiseGen", "datasets/ADVERTISEGEN"):
        got = c.get(spelled)
        assert (got.name, got.display_name, got.version_count) == ("datasets/advertisegen", "AdvertiseGen", 1)
    for ref in ("AdvertiseGen@1", "advertiseGEN@latest", "datasets/AdvertiseGen/versions/1"):
        assert c.get_version(ref).name == "datasets/advertisegen/versions/1"
    assert [f.path for f in c.list_files("AdvertiseGen@1")] == ["train.json"]
    assert [v.name for v in c.list_versions("AdvertiseGen")] == ["datasets/advertisegen/versions/1"]
    c.pull("AdvertiseGen", tmp_path / "out")
    assert (tmp_path / "out" / "train.json").read_bytes() == ROWS

    # The same name in another case is the same dataset.
    code, details = rpc_error(lambda: c.create("advertisegen", pb.Source(empty=pb.EmptySource())))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "'advertisegen' exists already" in details

    # A transform's target keeps its spelling too; a name written in lower case is its own spelling.
    version = c.transform("AdvertiseGen", "advertisegen-to-conversations", "AdvertiseGen-Conv")
    assert version.name == "datasets/advertisegen-conv/versions/1"
    c.create("output", pb.Source(empty=pb.EmptySource()))
    listed = {d.name: d.display_name for d in c.list()}
    assert listed == {
        "datasets/advertisegen": "AdvertiseGen",
        "datasets/advertisegen-conv": "AdvertiseGen-Conv",
        "datasets/output": "output",
    }

    c.delete("ADVERTISEGEN-CONV")
    assert "datasets/advertisegen-conv" not in {d.name for d in c.list()}


def test_an_explicit_display_name_must_spell_the_name(datasets) -> None:
    stub = datasets.client.stub
    ds = pb.Dataset(source=pb.Source(empty=pb.EmptySource()), display_name="ChatGLM3")
    made = stub.CreateDataset(pb.CreateDatasetRequest(dataset_id="chatglm3", dataset=ds)).dataset
    assert (made.name, made.display_name) == ("datasets/chatglm3", "ChatGLM3")
    other = pb.Dataset(source=pb.Source(empty=pb.EmptySource()), display_name="Something Else")
    code, details = rpc_error(
        lambda: stub.CreateDataset(pb.CreateDatasetRequest(dataset_id="other", dataset=other))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "display_name 'Something Else' must spell the name 'other'" in details


def test_a_name_folding_cannot_fix_says_what_to_write(datasets) -> None:
    c = datasets.client
    code, details = rpc_error(lambda: c.create("Advertise_Gen", pb.Source(empty=pb.EmptySource())))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "dataset_id 'Advertise_Gen' is not a valid name: use 'advertise-gen'" in details
    code, details = rpc_error(lambda: c.get("chatglm3 6b"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "use 'chatglm3-6b'" in details
    assert list(c.list()) == []


def test_a_missing_dataset_suggests_close_names(datasets) -> None:
    c = datasets.client
    c.create("AdvertiseGen", pb.Source(upload=pb.UploadSource()))
    c.create("chatglm3-6b", pb.Source(empty=pb.EmptySource()))
    calls = {
        "get": lambda: c.get("AdvertiseGem"),
        "get_version": lambda: c.get_version("advertisegem@1"),
        "list_versions": lambda: list(c.list_versions("advertise-gen")),
        "sync": lambda: c.sync("advertisegem"),
        "delete": lambda: c.delete("advertisegem"),
        "start_upload": lambda: c.stub.StartUpload(pb.StartUploadRequest(parent="datasets/advertisegem")),
    }
    for what, call in calls.items():
        code, details = rpc_error(call)
        assert code == grpc.StatusCode.NOT_FOUND, what
        assert "does not exist; did you mean 'advertisegen'?" in details, (what, details)
    code, details = rpc_error(lambda: c.get("ChatGLM3"))
    assert code == grpc.StatusCode.NOT_FOUND and "did you mean 'chatglm3-6b'?" in details
    code, details = rpc_error(lambda: c.get("nothing-like-it"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert details == "dataset 'nothing-like-it' does not exist (see `tunelab dataset ls`)"


# A database as the release before display names wrote it.
OLD_SCHEMA = """
CREATE TABLE datasets (
    id VARCHAR(63) NOT NULL, description TEXT NOT NULL, source TEXT NOT NULL, labels TEXT NOT NULL,
    create_time FLOAT NOT NULL, next_version INTEGER NOT NULL, PRIMARY KEY (id)
);
INSERT INTO datasets VALUES ('advertisegen', 'from before', '{"kind": "empty"}', '{}', 1700000000.0, 1);
"""


def test_a_database_from_before_display_names_gains_the_column(tmp_path: Path) -> None:
    from tunelab.cli.clients.datasets import DatasetClient
    from tunelab.common.grpc.channel import open_channel
    from tunelab.datasets.server import build_server
    from tunelab.datasets.settings import DatasetSettings

    db = tmp_path / "svc" / "datasets" / "state.sqlite"
    db.parent.mkdir(parents=True)
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript(OLD_SCHEMA)

    settings = DatasetSettings(data_dir=tmp_path / "svc", port=0, metrics_port=0)
    for _ in range(2):  # the second start finds the column there
        server, _store = build_server(settings)
        server.start()
        channel = open_channel(server.address)
        try:
            c = DatasetClient(channel, tmp_path / "client-cache")
            old = c.get("AdvertiseGen")
            assert (old.name, old.display_name, old.description) == (
                "datasets/advertisegen",
                "advertisegen",
                "from before",
            )
            if not any(d.name == "datasets/chatglm3" for d in c.list()):
                c.create("ChatGLM3", pb.Source(empty=pb.EmptySource()))
            assert c.get("chatglm3").display_name == "ChatGLM3"
        finally:
            channel.close()
            server.stop(1)
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT id, display_name, source FROM datasets ORDER BY id").fetchall()
    assert [(i, d, json.loads(s)["kind"]) for i, d, s in rows] == [
        ("advertisegen", "", "empty"),
        ("chatglm3", "ChatGLM3", "empty"),
    ]
