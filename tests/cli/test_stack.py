"""`tunelab up/down/status`: real service processes started, found again, and stopped."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from typer.testing import CliRunner, Result

from support import free_port, free_port_base
from tunelab.cli import stack
from tunelab.cli.main import app


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELAB_CONFIG", str(tmp_path / "no-config.yaml"))
    # The gateway's HTTP port does not follow --port-base: give each test its own.
    monkeypatch.setenv("TUNELAB_HTTP_PORT", str(free_port()))
    monkeypatch.setenv("TUNELAB_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("TUNELAB_TOKEN", "TUNELAB_PORT_BASE", "TUNELAB_DATASETS_PORT", "TUNELAB_STORE_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A stack directory that is always brought down afterwards."""
    path = tmp_path / "stack"
    yield path
    stack.down(path, lambda _: None, grace_s=5)


def up(data_dir: Path, port: int) -> Result:
    return invoke("up", "--data-dir", str(data_dir), "--port-base", str(port), "--metrics-port-base", "0")


def status(data_dir: Path) -> list[dict[str, object]]:
    return json.loads(invoke("status", "--data-dir", str(data_dir), "-o", "json").stdout)  # type: ignore[no-any-return]


def test_up_is_idempotent_and_down_stops_everything(data_dir: Path) -> None:
    port = free_port_base()
    first = up(data_dir, port)
    assert first.exit_code == 0, first.output
    rows = {r["service"]: r for r in status(data_dir)}
    row, env_row = rows["datasets"], rows["environments"]
    assert (row["service"], row["state"], row["health"]) == ("datasets", "running", "SERVING")
    assert (env_row["state"], env_row["health"]) == ("running", "SERVING")
    assert row["address"] == f"127.0.0.1:{port}"
    pid = int(row["pid"])  # type: ignore[call-overload]
    assert (data_dir / "run" / "datasets.pid").read_text().strip() == str(pid)
    assert (data_dir / "logs" / "datasets.log").is_file()

    again = up(data_dir, port)
    assert again.exit_code == 0, again.output
    assert f"datasets is already running (pid {pid}" in again.stdout
    assert status(data_dir)[0]["pid"] == pid

    down = invoke("down", "--data-dir", str(data_dir))
    assert down.exit_code == 0 and f"stopped datasets (pid {pid})" in down.stdout
    assert not stack.process_alive(pid, "tunelab.datasets")
    assert list((data_dir / "run").iterdir()) == []
    assert status(data_dir)[0]["state"] == "stopped"
    assert "nothing is running" in invoke("down", "--data-dir", str(data_dir)).stdout


def test_a_taken_port_is_reported_clearly(data_dir: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = up(data_dir, port)
    assert result.exit_code == 1
    assert f"port {port} on 127.0.0.1 is already in use by another process" in result.stderr
    assert "--port-base" in result.stderr and "TUNELAB_DATASETS_PORT" in result.stderr
    assert not (data_dir / "run" / "datasets.pid").exists()


def test_a_service_that_dies_at_start_points_at_its_log(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELAB_STORE_URL", "ftp://nowhere")
    result = up(data_dir, free_port_base())
    assert result.exit_code == 1
    assert "datasets exited with status" in result.stderr
    assert str(data_dir / "logs" / "datasets.log") in result.stderr
    assert not (data_dir / "run" / "datasets.pid").exists()


def test_a_stale_pid_file_is_replaced_and_a_reused_pid_left_alone(data_dir: Path) -> None:
    # A pid that now belongs to an unrelated process must never be signalled.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (data_dir / "run").mkdir(parents=True)
        (data_dir / "run" / "datasets.pid").write_text(f"{bystander.pid}\n")
        assert status(data_dir)[0]["state"] == "exited"
        result = up(data_dir, free_port_base())
        assert result.exit_code == 0, result.output
        assert status(data_dir)[0]["pid"] != bystander.pid
        assert invoke("down", "--data-dir", str(data_dir)).exit_code == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_down_kills_a_service_that_ignores_sigterm(tmp_path: Path) -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(60)", "tunelab.datasets"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    rec = stack.RunRecord("datasets", stubborn.pid, "tunelab.datasets", "", 0, "", 0.0)
    stack._write_record(tmp_path, rec)
    messages: list[str] = []
    assert stack.down(tmp_path, messages.append, grace_s=0.5) == 1
    assert any("killing it" in m for m in messages)
    stubborn.wait(5)  # down reaped it already (it is our child); this only closes the Popen
    stubborn.stdout.close()
    assert not (tmp_path / "run" / "datasets.pid").exists()


def test_ports_follow_the_base_and_per_service_overrides(tmp_path: Path) -> None:
    [spec] = [s for s in stack.SERVICES if s.name == "datasets"]
    assert stack.StackOptions(tmp_path, env={}).port(spec) == 50051
    assert stack.StackOptions(tmp_path, env={}).metrics_port(spec) == 9101
    opts = stack.StackOptions(tmp_path, port_base=7000, metrics_port_base=0, env={})
    assert (opts.port(spec), opts.metrics_port(spec)) == (7000, 0)
    opts = stack.StackOptions(tmp_path, "t", port_base=7000, env={"TUNELAB_DATASETS_PORT": "6123"})
    assert opts.address(spec) == "127.0.0.1:6123"
    env = stack._service_env(opts, spec, 6123, 0) | {}
    assert env["TUNELAB_PORT"] == "6123" and env["TUNELAB_DATA_DIR"] == str(tmp_path)
    assert env["TUNELAB_DATASETS_ADDR"] == "127.0.0.1:6123"


def test_allow_private_addresses_passes_through(tmp_path: Path) -> None:
    [spec] = [s for s in stack.SERVICES if s.name == "datasets"]
    opts = stack.StackOptions(tmp_path, "t", env={**os.environ, "TUNELAB_ALLOW_PRIVATE_ADDRESSES": "true"})
    assert stack._service_env(opts, spec, 1, 0)["TUNELAB_ALLOW_PRIVATE_ADDRESSES"] == "true"


def _list_datasets(address: str, token: str = "") -> grpc.StatusCode:
    """The status of a ListDatasets call to ``address`` with ``token`` (none: no token sent)."""
    from tunelab.common.grpc.channel import open_channel
    from tunelab.datasets.v1 import datasets_pb2, datasets_pb2_grpc

    with open_channel(address, token) as channel:
        try:
            datasets_pb2_grpc.DatasetServiceStub(channel).ListDatasets(
                datasets_pb2.ListDatasetsRequest(), timeout=30
            )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_up_runs_with_a_token_only_its_user_can_read(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port_base()
    first = up(data_dir, port)
    assert first.exit_code == 0, first.output
    token_file = data_dir / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32 and token not in first.output

    # Every service refuses a call without it (health and reflection stay open).
    for name in ("datasets", "environments", "trainer", "gateway"):
        address = json.loads((data_dir / "run" / f"{name}.json").read_text())["address"]
        if name == "datasets":
            assert _list_datasets(address) == grpc.StatusCode.UNAUTHENTICATED
            assert _list_datasets(address, "not-the-token") == grpc.StatusCode.UNAUTHENTICATED
            assert _list_datasets(address, token) == grpc.StatusCode.OK
        assert [r["health"] for r in status(data_dir) if r["service"] == name] == ["SERVING"]
    assert stack.status(data_dir, "")[0].health == "SERVING"  # health is open
    trainer = json.loads((data_dir / "run" / "trainer.json").read_text())["address"]
    refused = invoke("--trainer-addr", trainer, "--token", "wrong", "job", "ls")
    assert refused.exit_code == 1 and "trainer refused the token" in refused.stderr, refused.output

    # The CLI needs no flag: it finds the stack and its token through the data dir.
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(data_dir))
    listed = invoke("dataset", "ls", "-o", "json")
    assert listed.exit_code == 0 and json.loads(listed.stdout) == [], listed.output
    shown = {r["setting"]: r for r in json.loads(invoke("config", "show", "-o", "json").stdout)}
    assert shown["token"]["from"] == "local stack" and token not in shown["token"]["value"]
    # The gateway's routes need an API key: none exists, so none may call.
    gateway_url = json.loads(invoke("config", "show", "-o", "json").stdout)
    url = {r["setting"]: r["value"] for r in gateway_url}["gateway_url"]
    r = httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": "x"}, timeout=30)
    assert r.status_code == 401, r.text

    # A second `up` keeps the token (the running services have it).
    again = up(data_dir, port)
    assert again.exit_code == 0 and "another token" not in again.output, again.output
    assert token_file.read_text().strip() == token


def test_up_open_runs_without_auth_and_says_so(data_dir: Path) -> None:
    result = invoke(
        "up", "--open", "--data-dir", str(data_dir), "--port-base", str(free_port_base()),
        "--metrics-port-base", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "WITHOUT AUTH" in result.stderr
    assert not (data_dir / "token").exists()
    address = json.loads((data_dir / "run" / "datasets.json").read_text())["address"]
    assert _list_datasets(address) == grpc.StatusCode.OK
    http_port = json.loads((data_dir / "run" / "gateway.json").read_text())["http_port"]
    r = httpx.get(f"http://127.0.0.1:{http_port}/v1/models", timeout=30)
    assert r.status_code == 200, r.text


def test_an_empty_token_is_refused(data_dir: Path) -> None:
    result = invoke("up", "--token", "", "--data-dir", str(data_dir), "--port-base", str(free_port_base()))
    assert result.exit_code == 1 and "--open" in result.stderr, result.output
    assert not (data_dir / "run").exists() or not list((data_dir / "run").iterdir())
