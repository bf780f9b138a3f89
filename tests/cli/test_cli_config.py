"""Where the CLI finds the services (flags > env > config file > the running stack > defaults),
`tunelab config show|set`, shell completion, consistent verbs, and what errors tell a user."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from support import free_port
from tunelab.cli.config import load_config
from tunelab.cli.main import app
from tunelab.cli.runstate import RunRecord, _write_record

TUNELAB = str(Path(sys.executable).parent / "tunelab")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("TUNELAB_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("TUNELAB_CONFIG", str(tmp_path / "config.yaml"))
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path / "no-stack"))
    monkeypatch.setenv("TUNELAB_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def running_gateway(tmp_path: Path) -> Iterator[tuple[Path, RunRecord]]:
    """A data dir whose run record says a gateway runs (a live process that looks like one)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "tunelab.gateway"])
    data_dir = tmp_path / "stack"
    rec = RunRecord("gateway", proc.pid, "tunelab.gateway", "127.0.0.1:60054", 0, "", 0.0, http_port=60080)
    _write_record(data_dir, rec)
    yield data_dir, rec
    proc.kill()
    proc.wait()


def test_each_setting_comes_from_flag_then_env_then_file_then_default(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "trainer_addr: file-host:3\ngateway_addr: file-host:4\ngateway_url: http://file-host:8080\n"
        "token: from-file\noutput: yaml\n"
    )
    env = {
        "TUNELAB_CONFIG": str(cfg),
        "TUNELAB_DATA_DIR": str(tmp_path),
        "TUNELAB_TRAINER_ADDR": "env-host:3",
    }
    config = load_config({"trainer_addr": "flag-host:3", "gateway_url": None}, env)
    assert config.address("trainer") == "flag-host:3" and config.origin["trainer_addr"] == "flag"
    assert load_config({}, env).address("trainer") == "env-host:3"
    assert config.address("gateway") == "file-host:4" and config.origin["gateway_addr"] == str(cfg)
    assert config.gateway_url == "http://file-host:8080" and config.token == "from-file"
    assert config.output == "yaml"
    assert config.address("datasets") == "localhost:50051" and config.origin["datasets_addr"] == "default"

    other = tmp_path / "other.yaml"
    other.write_text("gateway_addr: other-host:50054\n")
    config = load_config({"config": str(other)}, env)  # --config beats TUNELAB_CONFIG
    assert config.path == other and config.address("gateway") == "other-host:50054"
    assert config.gateway_url == "http://other-host:8000"  # the gateway's host, the default HTTP port


def test_the_running_stack_gives_addresses_and_the_gateway_url(running_gateway, tmp_path: Path) -> None:
    data_dir, rec = running_gateway
    config = load_config({}, {"TUNELAB_DATA_DIR": str(data_dir), "TUNELAB_CONFIG": str(tmp_path / "none")})
    assert config.address("gateway") == rec.address and config.origin["gateway_addr"] == "local stack"
    assert config.gateway_url == "http://127.0.0.1:60080" and config.origin["gateway_url"] == "local stack"
    env = {"TUNELAB_DATA_DIR": str(data_dir), "TUNELAB_GATEWAY_URL": "https://gw.example.com/"}
    assert load_config({}, env).gateway_url == "https://gw.example.com"  # env beats the stack


def test_bad_settings_name_the_setting_and_where_it_came_from(tmp_path: Path) -> None:
    missing = invoke("--config", str(tmp_path / "nope.yaml"), "config", "show")
    assert missing.exit_code == 1 and f"--config {tmp_path / 'nope.yaml'}: no such file" in missing.stderr
    (tmp_path / "config.yaml").write_text("gateway_url: gateway:8000\n")
    bad = invoke("config", "show")
    assert (
        bad.exit_code == 1 and "gateway_url: 'gateway:8000'" in bad.stderr and "must be a URL" in bad.stderr
    )
    (tmp_path / "config.yaml").write_text("trainer_adr: x:1\n")
    typo = invoke("config", "show")
    assert typo.exit_code == 1 and "unknown setting(s) trainer_adr" in typo.stderr


def test_config_set_writes_the_file_and_show_tells_where_each_value_came_from(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    assert invoke("config", "set", "trainer_addr", "gpu-box:50053").exit_code == 0
    result = invoke("config", "set", "token", "s3cr3t-token-1234")
    assert result.exit_code == 0 and "s3cr3t" not in result.output and "****1234" in result.output
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600  # it holds a token
    rows = {
        r["setting"]: r
        for r in json.loads(invoke("--datasets-addr", "h:1", "config", "show", "-o", "json").stdout)
    }
    assert (rows["trainer_addr"]["value"], rows["trainer_addr"]["from"]) == ("gpu-box:50053", str(cfg))
    assert (rows["datasets_addr"]["value"], rows["datasets_addr"]["from"]) == ("h:1", "flag")
    assert rows["token"]["value"] == "****1234" and rows["token"]["env"] == "TUNELAB_TOKEN"
    assert rows["gateway_url"]["value"] == "http://localhost:8000"
    assert invoke("config", "set", "token", "").exit_code == 0
    assert "token" not in cfg.read_text()
    assert invoke("config", "set", "no_such", "x").exit_code == 1


def test_shell_completion_is_on(tmp_path: Path) -> None:
    assert "--install-completion" in invoke("--help").output
    script = subprocess.run([TUNELAB, "--show-completion", "bash"], capture_output=True, text=True)
    assert script.returncode == 0 and "_TUNELAB_COMPLETE=complete_bash" in script.stdout

    assert complete("tunelab da").stdout.split() == ["dataset"]
    assert complete("tunelab job r").stdout.split() == ["restart", "rm"]  # `delete`, the old name, is hidden
    assert "--follow" in complete("tunelab job submit --fo").stdout.split()


@pytest.mark.parametrize(
    ("group", "verbs"),
    [
        ("dataset", {"create", "ls", "get", "rm"}),
        ("env", {"create", "ls", "get", "rm", "logs"}),
        ("job", {"submit", "ls", "get", "rm", "logs", "watch"}),
        ("queue", {"create", "ls", "get", "rm"}),
        ("model", {"deploy", "ls", "get", "rm"}),
        ("key", {"create", "ls", "rm"}),
    ],
)
def test_every_resource_has_the_same_verbs_with_an_example(group: str, verbs: set[str]) -> None:
    listed = invoke(group, "--help").output
    for verb in verbs:
        assert f" {verb} " in listed, (group, verb)
        result = invoke(group, verb, "--help")
        assert (
            result.exit_code == 0
            and "Example" in result.output
            and f"tunelab {group} {verb}" in result.output
        )
        if verb in ("ls", "get"):
            assert "--output" in result.output and "json" in result.output


def test_errors_say_what_to_do() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = invoke("--trainer-addr", address, "job", "ls")
    assert (
        result.exit_code == 1
        and f"cannot reach trainer at {address} — is `tunelab up` running?" in result.stderr
    )
    url = f"http://127.0.0.1:{free_port()}"
    result = invoke("--gateway-url", url, "generate", "chatglm3-ad", "hello")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot reach the gateway's HTTP front door at {url} — is `tunelab up` running?" in result.stderr


def complete(line: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """What bash completion gets for ``line`` (the word being completed is its last one)."""
    words = line.split(" ")
    env = {**os.environ, **(env or {}), "_TUNELAB_COMPLETE": "complete_bash", "COMP_WORDS": line}
    env["COMP_CWORD"] = str(len(words) - 1)
    return subprocess.run([TUNELAB], env=env, capture_output=True, text=True, timeout=30)


def test_names_complete_from_the_service(tmp_path: Path) -> None:
    from tunelab.cli.clients.datasets import DatasetClient
    from tunelab.common.grpc.channel import open_channel
    from tunelab.datasets.server import build_server
    from tunelab.datasets.settings import DatasetSettings
    from tunelab.datasets.v1 import datasets_pb2 as pb

    server, _ = build_server(DatasetSettings(data_dir=tmp_path / "svc", port=0, metrics_port=0))
    server.start()
    try:
        with open_channel(server.address) as channel:
            client = DatasetClient(channel, tmp_path / "client-cache")
            (tmp_path / "files").mkdir()
            (tmp_path / "files" / "train.json").write_text("{}\n")
            for name in ("advertisegen", "advertisegen-fix", "output"):
                client.create(name, pb.Source(upload=pb.UploadSource()))
            client.push("advertisegen", tmp_path / "files")
        env = {"TUNELAB_DATASETS_ADDR": server.address}
        assert complete("tunelab dataset get adv", env).stdout.split() == ["advertisegen", "advertisegen-fix"]
        assert complete("tunelab dataset files advertisegen@", env).stdout.split() == ["advertisegen@1"]
        flag = complete(f"tunelab --datasets-addr {server.address} dataset pull o").stdout.split()
        assert flag == ["output"]  # the global flag typed before the command is honoured
    finally:
        server.stop(1)
    gone = complete("tunelab dataset get adv", env)  # no service: no names, and no noise
    assert gone.returncode == 0 and gone.stdout.split() == [] and "Traceback" not in gone.stderr


def test_the_token_comes_from_the_stack_when_nothing_names_one(tmp_path: Path) -> None:
    from tunelab.cli.stacktoken import write_token

    data_dir = tmp_path / "stack"
    write_token(data_dir, "stack-token")
    assert stat.S_IMODE((data_dir / "token").stat().st_mode) == 0o600
    env = {"TUNELAB_CONFIG": str(tmp_path / "none.yaml"), "TUNELAB_DATA_DIR": str(data_dir)}
    config = load_config({}, env)
    assert (config.token, config.origin["token"]) == ("stack-token", "local stack")
    assert load_config({}, {**env, "TUNELAB_TOKEN": "from-env"}).token == "from-env"
    assert load_config({"token": "from-flag"}, env).token == "from-flag"
    other = {**env, "TUNELAB_DATA_DIR": str(tmp_path / "no-stack")}
    assert (load_config({}, other).token, load_config({}, other).origin["token"]) == ("", "default")
