"""A job names its datasets as people type them (``--datasets AdvertiseGen:…``): the trainer stores
the mount as ``datasets/advertisegen``, and a dataset that does not exist is refused at submit
with the datasets service's "did you mean"."""

from __future__ import annotations

from pathlib import Path

import grpc

from jobhelpers import rpc_error, spec
from tunelab.datasets.v1 import datasets_pb2 as dpb
from tunelab.trainer.v1 import trainer_pb2 as pb

WORK = "/home/jovyan/ChatGLM3/finetune_demo"


def test_mounts_resolve_without_regard_to_case(stack, tmp_path: Path) -> None:
    client, datasets = stack.client, stack.datasets
    datasets.create("AdvertiseGen", dpb.Source(upload=dpb.UploadSource()))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_text('{"content": "a", "summary": "b"}\n')
    datasets.push("advertisegen", tmp_path / "data")
    datasets.create("Output", dpb.Source(empty=dpb.EmptySource()))

    mounts = [
        pb.DatasetMount(dataset="datasets/AdvertiseGen", path="data/AdvertiseGen"),
        pb.DatasetMount(dataset="datasets/ADVERTISEGEN/versions/1", path="data/pinned"),
        pb.DatasetMount(dataset="datasets/OUTPUT", path="output"),
    ]
    job = client.submit(spec(["true"], working_dir=WORK, datasets=mounts), validate_only=True)
    got = [(m.dataset, m.resolved_version, m.mode) for m in job.spec.datasets]
    assert got == [
        ("datasets/advertisegen", "datasets/advertisegen/versions/1", pb.DatasetMount.MODE_INPUT),
        (
            "datasets/advertisegen/versions/1",
            "datasets/advertisegen/versions/1",
            pb.DatasetMount.MODE_INPUT,
        ),
        ("datasets/output", "", pb.DatasetMount.MODE_OUTPUT),
    ]

    missing = [pb.DatasetMount(dataset="datasets/AdvertiseGem", path="data")]
    code, message = rpc_error(lambda: client.submit(spec(["true"], working_dir=WORK, datasets=missing)))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "dataset 'advertisegem' does not exist; did you mean 'advertisegen'?" in message
    bad = [pb.DatasetMount(dataset="datasets/Advertise_Gen", path="data")]
    code, message = rpc_error(lambda: client.submit(spec(["true"], working_dir=WORK, datasets=bad)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "use 'advertise-gen'" in message
    assert not list(client.list())
