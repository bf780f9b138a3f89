"""The names of the AI Lab walkthrough work as typed: ``tunelab dataset create AdvertiseGen``,
``--datasets AdvertiseGen:/…``, ``tunelab dataset get ChatGLM3``, against a real datasets service."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

from tunelab.cli.clients.gateway import model_source
from tunelab.cli.commands.jobspec import parse_mount
from tunelab.cli.main import app
from tunelab.common.errors import InvalidArgument


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's config file, cache or stack."""
    monkeypatch.setenv("TUNELAB_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("TUNELAB_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("TUNELAB_DATASETS_ADDR", "TUNELAB_TOKEN", "TUNELAB_OUTPUT", "TUNELAB_PORT_BASE"):
        monkeypatch.delenv(var, raising=False)


def test_mounts_and_model_sources_fold_the_dataset_name() -> None:
    mount = parse_mount("AdvertiseGen:/home/jovyan/ChatGLM3/finetune_demo/data/AdvertiseGen")
    assert (mount.dataset, mount.path) == (
        "datasets/advertisegen",
        "/home/jovyan/ChatGLM3/finetune_demo/data/AdvertiseGen",
    )
    assert parse_mount("Output@3:output").dataset == "datasets/output/versions/3"
    assert parse_mount("ChatGLM3@latest:code").dataset == "datasets/chatglm3"
    with pytest.raises(typer.BadParameter, match="use 'advertise-gen'"):
        parse_mount("Advertise_Gen:data")
    assert model_source("Output@3").dataset_version == "datasets/output/versions/3"
    assert model_source("dataset:ChatGLM3-6B").dataset_version == "datasets/chatglm3-6b"
    with pytest.raises(InvalidArgument, match="use 'chatglm3-6b'"):
        model_source("ChatGLM3_6B")


def test_walkthrough_names_as_typed(datasets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, ["--datasets-addr", datasets.address, *args])

    (tmp_path / "AdvertiseGen").mkdir()
    (tmp_path / "AdvertiseGen" / "train.json").write_bytes(b'{"content": "a", "summary": "b"}\n')
    monkeypatch.chdir(tmp_path)

    result = invoke("dataset", "create", "AdvertiseGen", "--source", "./AdvertiseGen")
    assert result.exit_code == 0, result.output
    assert "created dataset advertisegen (AdvertiseGen); advertisegen@1 is READY: 1 files" in result.stdout
    result = invoke("dataset", "create", "output", "--source", "empty")
    assert result.exit_code == 0 and "created dataset output" in result.stdout and "(" not in result.stdout
    result = invoke("dataset", "create", "ChatGLM3", "--source", "empty", "-o", "json")
    made = json.loads(result.stdout)
    assert (made["name"], made["display_name"]) == ("datasets/chatglm3", "ChatGLM3")

    table = invoke("dataset", "get", "ChatGLM3").stdout
    assert "chatglm3 (ChatGLM3)" in table
    shown = yaml.safe_load(invoke("dataset", "get", "CHATGLM3", "-o", "yaml").stdout)
    assert (shown["name"], shown["display_name"]) == ("datasets/chatglm3", "ChatGLM3")
    assert "advertisegen (AdvertiseGen)" in invoke("dataset", "ls").stdout
    listed = json.loads(invoke("dataset", "ls", "-o", "json").stdout)
    assert [(d["name"], d["display_name"]) for d in listed] == [
        ("datasets/advertisegen", "AdvertiseGen"),
        ("datasets/chatglm3", "ChatGLM3"),
        ("datasets/output", "output"),
    ]

    result = invoke("dataset", "pull", "AdvertiseGen@1", "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "train.json").exists()
    assert "advertisegen@1" in invoke("dataset", "versions", "ADVERTISEGEN").stdout

    result = invoke("dataset", "get", "AdvertiseGem")
    assert result.exit_code == 1 and "did you mean 'advertisegen'?" in result.stderr
    assert "Traceback" not in result.output
    result = invoke("dataset", "create", "Advertise_Gen", "--source", "empty")
    assert result.exit_code == 1 and "use 'advertise-gen'" in result.stderr


def test_completion_matches_names_typed_in_any_case() -> None:
    from tunelab.cli.completion import _matching

    names = ["datasets/advertisegen", "datasets/chatglm3", "datasets/output"]
    assert _matching(names, "datasets/", "Adv") == ["advertisegen"]
    assert _matching(names, "datasets/", "CHAT") == ["chatglm3"]


def test_a_mount_may_say_read_only_or_read_write() -> None:
    from tunelab.cli.commands.jobspec import context_datasets, parse_mount
    from tunelab.trainer.v1 import trainer_pb2 as pb

    model = parse_mount("chatglm3-6b:chatglm3-6b:ro")
    assert (model.dataset, model.path, model.mode) == (
        "datasets/chatglm3-6b",
        "chatglm3-6b",
        pb.DatasetMount.MODE_INPUT,
    )
    assert parse_mount("Output@2:/w/out:rw").mode == pb.DatasetMount.MODE_OUTPUT
    plain = parse_mount("AdvertiseGen:/home/jovyan/ChatGLM3/finetune_demo/data/AdvertiseGen")
    assert (plain.path, plain.mode) == ("/home/jovyan/ChatGLM3/finetune_demo/data/AdvertiseGen", 0)
    notebook = {"TUNELAB_DATASETS": "ChatGLM3:/home/jovyan/ChatGLM3 output:/home/jovyan/out"}
    assert context_datasets(["output:/home/jovyan/out:rw"], notebook) == ["ChatGLM3:/home/jovyan/ChatGLM3"]
