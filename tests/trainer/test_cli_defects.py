"""What `tunelab job submit` does with out-of-range numbers and names in any case, and how
`tunelab key ls` shows a key's state, against a real trainer and a real gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli.main import app


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--priority", "-99999999999"),
        ("--priority", "2147483648"),
        ("--workers", "3000000000"),
        ("--backoff-limit", "-3000000000"),
        ("--port", "99999999999"),
    ],
)
def test_a_number_past_int32_is_a_usage_error_naming_its_flag(cli, flag: str, value: str) -> None:
    result = cli("job", "submit", *(["--server"] if flag == "--port" else []), flag, value, "--", "true")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert flag in text and "-2147483648 to 2147483647 (int32)" in text
    assert "Traceback" not in result.output
    assert json.loads(cli("job", "ls", "-o", "json").output) == []


def test_the_int32_bounds_themselves_are_accepted(cli) -> None:
    for priority in ("2147483647", "-2147483648"):
        result = cli("job", "submit", "--dry-run", "--priority", priority, "--", "true")
        assert result.exit_code == 0, result.output
        assert f"priority {priority})" in result.output


def test_a_name_in_upper_case_is_the_job_id_in_lower_case(cli) -> None:
    result = cli("job", "submit", "--name", "FineTune-ChatGLM3", "--", "true")
    assert result.exit_code == 0, result.output
    assert "submitted job finetune-chatglm3 " in result.output
    listed = json.loads(cli("job", "ls", "-o", "json").output)
    assert [j["name"] for j in listed] == ["jobs/finetune-chatglm3"]
    assert listed[0]["spec"]["display_name"] == "FineTune-ChatGLM3"
    for typed in ("FineTune-ChatGLM3", "finetune-chatglm3"):
        got = cli("job", "get", typed, "-o", "json")
        assert got.exit_code == 0, got.output
        assert json.loads(got.output)["name"] == "jobs/finetune-chatglm3"


@pytest.mark.parametrize(("name", "suggestion"), [("BAD_NAME", "bad-name"), ("Finetune ChatGLM3", None)])
def test_a_name_invalid_after_folding_is_refused_not_rewritten(
    cli, name: str, suggestion: str | None
) -> None:
    result = cli("job", "submit", "--name", name, "--", "true")
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "--name" in text and "is not a valid name" in text
    if suggestion:
        assert f"use '{suggestion}'" in text
    assert json.loads(cli("job", "ls", "-o", "json").output) == []


@pytest.fixture
def gateway_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from tunelab.gateway.server import build_gateway
    from tunelab.gateway.settings import GatewaySettings

    settings = GatewaySettings(
        data_dir=tmp_path / "gw", port=0, metrics_port=0, http_port=0, gpu_poll_interval_s=1
    )  # type: ignore[call-arg]
    gateway = build_gateway(settings)
    gateway.start()
    monkeypatch.setenv("TUNELAB_GATEWAY_ADDR", gateway.grpc.address)
    monkeypatch.setenv("TUNELAB_CONFIG", str(tmp_path / "no-config.yaml"))
    monkeypatch.setenv("TUNELAB_DATA_DIR", str(tmp_path / "no-stack"))
    monkeypatch.delenv("TUNELAB_TOKEN", raising=False)
    monkeypatch.delenv("TUNELAB_OUTPUT", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    yield
    gateway.stop(0.5)


def test_key_ls_shows_the_state_by_name(gateway_cli: None) -> None:
    run = CliRunner().invoke
    assert run(app, ["key", "create", "ci"]).exit_code == 0
    table = run(app, ["key", "ls"])
    assert table.exit_code == 0, table.output
    header, row = table.output.strip().splitlines()[0], table.output.strip().splitlines()[-1]
    assert "STATE" in header and "apiKeys/ci" in row
    assert row.split()[-1] == "ACTIVE"
    listed = json.loads(run(app, ["key", "ls", "-o", "json"]).output)
    assert listed[0]["state"] == "STATE_ACTIVE"
