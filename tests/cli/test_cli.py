"""The tunelab command line: parsing, validation and help without a server; then the whole story
against a datasets service the CLI starts itself (`tunelab up`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from support import free_port, free_port_base
from tunelab.cli.commands.sources import S3Options, parse_source, split_ref
from tunelab.cli.config import load_config
from tunelab.cli.main import app

DATASET_COMMANDS = [
    "create", "ls", "get", "versions", "watch", "sync", "pull", "push", "files", "transform", "rm", "gc",
]  # fmt: skip


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's config file, cache or stack."""
    monkeypatch.setenv("TUNELAB_CONFIG", str(tmp_path / "no-config.yaml"))
    # The gateway's HTTP port does not follow --port-base: give each test its own.
    monkeypatch.setenv("TUNELAB_HTTP_PORT", str(free_port()))
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("TUNELAB_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("TUNELAB_DATASETS_ADDR", "TUNELAB_TOKEN", "TUNELAB_OUTPUT", "TUNELAB_PORT_BASE"):
        monkeypatch.delenv(var, raising=False)


# -- help and parsing --------------------------------------------------------------------------
def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("dataset", "up", "down", "status", "version", "--install-completion"):
        assert command in result.output


@pytest.mark.parametrize("command", DATASET_COMMANDS)
def test_every_dataset_command_explains_itself_with_an_example(command: str) -> None:
    result = invoke("dataset", command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and f"tunelab dataset {command}" in result.output


@pytest.mark.parametrize("command", ["up", "down", "status"])
def test_stack_commands_explain_themselves(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0 and f"tunelab {command}" in result.output


def test_importing_the_cli_stays_light() -> None:
    """`tunelab --help` must not pay for grpc, protobuf or the service settings."""
    code = (
        "import sys, tunelab.cli.main; "
        "print(sorted(m for m in ('grpc', 'google.protobuf', 'pydantic', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


BAD_SOURCES = ["ftp://host/file", "git@github.com:org/repo", "s3://", "hf:", "./no-such-dir"]


@pytest.mark.parametrize("source", BAD_SOURCES)
def test_a_bad_source_is_a_usage_error_listing_the_valid_ones(source: str) -> None:
    result = invoke("dataset", "create", "d1", "--source", source)
    assert result.exit_code == 2, result.output
    assert "Valid sources" in result.output
    for kind in ("https://", "git+https://", "s3://bucket/prefix", "upload:DIR", "hf:org/repo", "empty"):
        assert kind in result.output


def test_a_label_must_be_key_value(tmp_path: Path) -> None:
    result = invoke("dataset", "create", "d1", "--source", "empty", "--label", "novalue")
    assert result.exit_code == 2 and "KEY=VALUE" in result.output


def test_parse_source_for_each_kind(tmp_path: Path) -> None:
    http, _ = parse_source("https://example.com/AdvertiseGen.tar.gz")
    assert http.http.url == "https://example.com/AdvertiseGen.tar.gz"

    git, _ = parse_source("git+https://github.com/THUDM/ChatGLM3@v1.0")
    assert (git.git.url, git.git.ref) == ("https://github.com/THUDM/ChatGLM3", "v1.0")
    scp, _ = parse_source("git:git@github.com:org/repo.git@feature/x")
    assert (scp.git.url, scp.git.ref) == ("git@github.com:org/repo.git", "feature/x")
    assert split_ref("https://me@host/org/repo") == ("https://me@host/org/repo", "")

    s3, _ = parse_source("s3://bucket/some/prefix", S3Options(endpoint="http://minio:9000", access_key="ak"))
    assert (s3.s3.bucket, s3.s3.prefix, s3.s3.endpoint) == ("bucket", "some/prefix", "minio:9000")
    assert s3.s3.secure is False and s3.s3.access_key == "ak"
    assert parse_source("s3://b", S3Options(endpoint="minio:9000"))[0].s3.secure is True

    hf, _ = parse_source("hf:datasets/shibing624/AdvertiseGen@main")
    assert (hf.hf.repo_id, hf.hf.repo_type, hf.hf.revision) == ("shibing624/AdvertiseGen", "dataset", "main")
    assert parse_source("hf:THUDM/chatglm3-6b")[0].hf.repo_type == "model"

    empty, directory = parse_source("empty")
    assert empty.WhichOneof("kind") == "empty" and directory is None
    for text in (f"upload:{tmp_path}", str(tmp_path)):
        upload, directory = parse_source(text)
        assert upload.WhichOneof("kind") == "upload" and directory == tmp_path.resolve()


def test_settings_come_from_flags_then_env_then_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("datasets_addr: file-host:1\ntoken: from-file\noutput: yaml\n")
    env = {"TUNELAB_CONFIG": str(cfg), "TUNELAB_DATA_DIR": str(tmp_path), "TUNELAB_TOKEN": "from-env"}
    config = load_config({"datasets_addr": "flag-host:2", "token": None}, env)
    assert config.address("datasets") == "flag-host:2"
    assert config.token == "from-env"
    assert config.output == "yaml"
    assert config.address("trainer") == "localhost:50053"  # nothing set, no stack running

    cfg.write_text("datasets_adr: typo:1\n")
    with pytest.raises(Exception, match=r"unknown setting.*datasets_adr"):
        load_config({}, env)


def test_an_unreachable_service_gets_a_friendly_message() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = invoke("--datasets-addr", address, "dataset", "ls")
    assert result.exit_code == 1
    assert f"cannot reach datasets at {address} — is `tunelab up` running?" in result.stderr
    assert "Traceback" not in result.output


# -- end to end --------------------------------------------------------------------------------
def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != ".tunelab-manifest.json"
    }


def test_up_create_pull_and_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir, port = tmp_path / "stack", free_port_base()
    result = invoke("up", "--data-dir", str(data_dir), "--port-base", str(port), "--metrics-port-base", "0")
    assert result.exit_code == 0, result.output
    try:
        # The CLI finds the stack through the data dir, no address needed.
        monkeypatch.setenv("TUNELAB_DATA_DIR", str(data_dir))
        files = {"train.json": b'{"content": "a"}\n' * 1000, "dev.json": b"{}\n", "nested/a.md": b"# hi\n"}
        write_tree(tmp_path / "dir", files)
        monkeypatch.chdir(tmp_path)

        result = invoke("dataset", "create", "d1", "--source", "./dir", "--label", "team=nlp")
        assert result.exit_code == 0, result.output
        assert "d1@1 is READY: 3 files" in result.stdout

        result = invoke("dataset", "pull", "d1", "out")
        assert result.exit_code == 0, result.output
        assert read_tree(tmp_path / "out") == files
        assert "already holds d1@1" in invoke("dataset", "pull", "d1@1", "out").stdout

        listed = json.loads(invoke("dataset", "ls", "-o", "json").stdout)
        assert [(d["name"], d["labels"], d["version_count"]) for d in listed] == [
            ("datasets/d1", {"team": "nlp"}, 1)
        ]
        version = yaml.safe_load(invoke("dataset", "get", "d1@1", "-o", "yaml").stdout)
        assert version["state"] == "STATE_READY" and version["file_count"] == 3
        paths = [f["path"] for f in json.loads(invoke("dataset", "files", "d1", "-o", "json").stdout)]
        assert paths == sorted(files)
        assert "d1@1" in invoke("dataset", "versions", "d1").stdout

        # A second version; the first stays pullable.
        (tmp_path / "dir" / "dev.json").write_bytes(b"[]\n")
        result = invoke("dataset", "push", "d1", "dir", "-o", "json")
        assert json.loads(result.stdout)["name"] == "datasets/d1/versions/2"
        invoke("dataset", "pull", "d1@1", "old")
        assert read_tree(tmp_path / "old") == files

        result = invoke("dataset", "get", "no-such-dataset")
        assert result.exit_code == 1 and "no-such-dataset" in result.stderr
        assert "Traceback" not in result.output
        assert invoke("dataset", "rm", "d1@1").exit_code == 0
        assert [v["name"] for v in json.loads(invoke("dataset", "versions", "d1", "-o", "json").stdout)] == [
            "datasets/d1/versions/2"
        ]
    finally:
        result = invoke("down", "--data-dir", str(data_dir))
    assert result.exit_code == 0 and "stopped datasets" in result.stdout
    assert invoke("status", "--data-dir", str(data_dir)).exit_code == 3
    result = invoke("--datasets-addr", f"127.0.0.1:{port}", "dataset", "ls")
    assert result.exit_code == 1 and "cannot reach datasets" in result.stderr
