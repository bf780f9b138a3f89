"""`tunelab job …` and `tunelab queue …` against the trainer: the seed's submit flags, listing,
logs, watch, restart, delete, and the errors a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli.main import app

JOB_COMMANDS = ["submit", "ls", "get", "logs", "watch", "metrics", "cancel", "restart", "delete"]


@pytest.mark.parametrize("command", JOB_COMMANDS)
def test_every_job_command_explains_itself_with_an_example(command: str) -> None:
    result = CliRunner().invoke(app, ["job", command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output and f"tunelab job {command}" in result.output


def test_the_seed_submit_flags_and_the_job_commands(cli, tmp_path: Path) -> None:
    work = tmp_path / "ChatGLM3"
    result = cli(
        "job", "submit", "--name", "finetune-chatglm3", "-t", "PYTORCH",
        "--image", "release.daocloud.io/baize/baize-notebook:v0.5.0", "--priority", "baize-high-priority",
        "--resources", "cpu=1,memory=1Gi", "--workers", "1", "--queue", "default", "--working-dir", str(work),
        "--labels", "job_type=pytorch", "--restart-policy", "on-failure", "--watch",
        "--", "python", "-c", "import os; print('hello from', os.getcwd())",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "submitted job finetune-chatglm3 (QUEUED, priority 100000)" in result.output, result.output

    listed = json.loads(cli("job", "ls", "-o", "json", "--label", "job_type=pytorch").output)
    assert [(j["name"], j["state"]) for j in listed] == [("jobs/finetune-chatglm3", "STATE_SUCCEEDED")]
    assert listed[0]["spec"]["image"].endswith("baize-notebook:v0.5.0")
    table = cli("job", "ls").output
    assert "finetune-chatglm3" in table and "SUCCEEDED" in table and "high" in table
    assert f"hello from {work}" in cli("job", "logs", "finetune-chatglm3").output
    details = cli("job", "get", "finetune-chatglm3").output
    assert "State:       SUCCEEDED" in details and "cpu 1, memory 1.0 GiB" in details

    assert cli("job", "restart", "finetune-chatglm3").exit_code == 0
    watched = cli("job", "watch", "finetune-chatglm3")
    assert watched.exit_code == 0, watched.output
    assert "attempt 2" in cli("job", "logs", "finetune-chatglm3", "--attempt", "2").output
    assert cli("job", "delete", "finetune-chatglm3").output.strip() == "deleted job finetune-chatglm3"


def test_what_a_user_sees_when_it_goes_wrong(cli) -> None:
    result = cli("job", "submit", "-t", "TENSORFLOW", "--", "true")
    assert result.exit_code == 1 and "TENSORFLOW is not supported yet" in result.output
    result = cli("job", "submit", "--resources", "nvidia.com/gpu=5", "--", "true")
    assert result.exit_code == 1 and "asks for 5 GPU(s) but the executor has 2" in result.output
    result = cli("job", "submit", "--datasets", "advertisegen", "--", "true")
    assert result.exit_code == 2 and "NAME[@VERSION]:PATH" in result.output
    result = cli("job", "submit", "--resources", "memory=lots", "--", "true")
    assert result.exit_code == 2 and "not a memory quantity" in result.output
    result = cli("job", "submit", "--name", "fails", "--restart-policy", "never", "--watch", "--", "false")
    assert result.exit_code == 1 and "job fails FAILED: NonZeroExit" in result.output
    assert cli("job", "get", "nope").exit_code == 1


def test_queue_commands(cli) -> None:
    assert cli("queue", "create", "research", "--gpu-quota", "1", "--max-concurrent-jobs", "2").exit_code == 0
    table = cli("queue", "ls").output
    assert "research" in table and "0/1" in table and "0/2" in table
    updated = json.loads(
        cli("queue", "update", "research", "--gpu-quota", "2", "--pause", "-o", "json").output
    )
    assert updated["gpu_quota"] == 2 and updated["state"] == "STATE_PAUSED"
    assert "2/2 GPUs free" in cli("queue", "capacity").output
    assert cli("queue", "delete", "research").exit_code == 0
    result = cli("queue", "delete", "default")
    assert result.exit_code == 1 and "cannot be deleted" in result.output
