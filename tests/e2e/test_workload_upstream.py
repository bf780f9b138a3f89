"""Serving through the trainer, on the embedded stack: `tunelab model deploy --runtime engine
--workload` has the trainer run the engine as a server job (CPU), the gateway follows the job to its
endpoint and routes to it; `model rm` cancels and deletes the job. A replica whose job fails, and a
base that is no model, FAIL the deployment with one plain line, and free its names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tunelab.cli.stacktoken import read_token
from walkthrough_tools import TUNELAB, Cli

# Quick scheduling and restarts, and one retry before a failing server job is FAILED.
FAST = {
    "TUNELAB_SCHEDULE_INTERVAL_S": "0.2",
    "TUNELAB_REPORT_INTERVAL_S": "0.3",
    "TUNELAB_BACKOFF_BASE_S": "0.2",
    "TUNELAB_BACKOFF_MAX_S": "1",
    "TUNELAB_BACKOFF_LIMIT": "1",
    "TUNELAB_CANCEL_GRACE_S": "10",
    "TUNELAB_HEALTH_INTERVAL_S": "0.5",
    "TUNELAB_GPUS": "0",
    "OMP_NUM_THREADS": "1",
}
LOADING = ("STATE_PENDING", "STATE_LOADING")


def build_models(root: Path) -> tuple[Path, Path, Path]:
    """A tiny Llama, a LoRA adapter for it in a checkpoint folder, and the same model with a
    config.json naming an architecture transformers does not know."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.recipes.tinymodel import build_tiny_model

    text = "\n".join(["hello world, a tiny model writes ad copy", "the quick brown fox"] * 30)
    base = build_tiny_model(root / "base", text, vocab_size=300)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(root / "output" / "checkpoint-1")
    broken = build_tiny_model(root / "broken", text, vocab_size=300)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "no-such-arch"}))
    return base, root / "output", broken


def tunelab(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TUNELAB, *args], env=env, capture_output=True, text=True, timeout=600, check=False)


def wait_loaded(cli: Cli, name: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        d: dict[str, Any] = cli.data("model", "get", name)
        if d["state"] not in LOADING:
            return d
        if time.monotonic() > deadline:
            pytest.fail(f"deployment {name} still loading after {timeout}s: {json.dumps(d, indent=1)}")
        time.sleep(0.5)


def wait_ready(cli: Cli, name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        d: dict[str, Any] = cli.data("model", "get", name)
        if d["state"] == "STATE_READY":
            return d
        if time.monotonic() > deadline:
            pytest.fail(f"deployment {name} not READY after {timeout}s: {json.dumps(d, indent=1)}")
        time.sleep(0.5)


def restart_gateway(env: dict[str, str]) -> None:
    """SIGTERM to the stack's gateway, then `tunelab up` (which starts only what is not running)."""
    from tunelab.cli.runstate import process_alive, read_record

    rec = read_record(Path(env["TUNELAB_DATA_DIR"]), "gateway")
    assert rec is not None
    os.kill(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while process_alive(rec.pid, rec.module) and time.monotonic() < deadline:
        time.sleep(0.1)
    Cli(env, echo=lambda _: None).run("up")


def engine_pids(root: Path, served: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"tunelab.engine" in argv and served.encode() in argv and cwd.startswith(str(root)):
            found.append(int(entry.name))
    return found


def watch_states(address: str, token: str, job: str, seen: list[str]) -> threading.Thread:
    """Follows the job's states (until it ends, or is deleted) into ``seen``."""
    from tunelab.common.grpc.channel import open_channel
    from tunelab.trainer.v1 import trainer_pb2 as pb
    from tunelab.trainer.v1 import trainer_pb2_grpc

    def run() -> None:
        with open_channel(address, token) as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            try:
                for resp in stub.WatchJob(pb.WatchJobRequest(name=job), timeout=120):
                    seen.append(pb.Job.State.Name(resp.job.state))
            except grpc.RpcError as exc:
                seen.append(exc.code().name)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_engine_as_a_trainer_workload(stack_env: dict[str, str], tmp_path: Path) -> None:
    env = {**stack_env, **FAST}
    cli = Cli(env, echo=lambda _: None)
    base, output, broken = build_models(tmp_path / "models")
    cli.run("up")
    trainer = f"127.0.0.1:{int(env['TUNELAB_PORT_BASE']) + 2}"
    gateway_url = f"http://127.0.0.1:{env['TUNELAB_HTTP_PORT']}"
    auth = {"authorization": f"Bearer {cli.stdout('key', 'create', 'e2e')}"}
    notes = tmp_path / "models" / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("meeting notes, not a model\n")
    for name, source in (("tiny-base", base), ("output", output), ("broken", broken), ("notes", notes)):
        cli.run("dataset", "create", name, "--source", str(source))
    workload = ["--runtime", "engine", "--workload", "--cpu", "500m"]

    # A replica whose server exits: restarted once (TUNELAB_BACKOFF_LIMIT=1), then the job and the
    # deployment are FAILED, with the job named and the engine's own one-line reason.
    failed = tunelab(
        env, "model", "deploy", "broken", "--base", "broken", "-a", "ad=output:checkpoint-1", *workload
    )
    assert failed.returncode == 1, failed.stdout + failed.stderr
    d = cli.data("model", "get", "broken")
    assert d["state"] == "STATE_FAILED", d
    error = d["error"]
    assert "job dep-broken-0" in error and "`tunelab job logs dep-broken-0`" in error, error
    assert "no-such-arch" in error and "\n" not in error and "Traceback" not in error, error
    job = cli.data("job", "get", "dep-broken-0")
    assert job["state"] == "STATE_FAILED" and job["attempt"] == 2, job

    # The adapter's name "ad" is free again: a deployment that works takes it.
    assert (
        cli.run(
            "model",
            "deploy",
            "tiny",
            "--base",
            "tiny-base",
            "-a",
            "ad=output:checkpoint-1",
            *workload,
            "--no-wait",
        )
        == 0
    )
    d = wait_loaded(cli, "tiny")
    assert d["state"] == "STATE_READY", json.dumps(d, indent=1)
    assert d["served_model_names"] == ["tiny", "ad"]
    replica = d["replica_statuses"][0]
    assert replica["job"] == "jobs/dep-tiny-0" and replica["healthy"], replica
    job = cli.data("job", "get", "dep-tiny-0")
    assert job["state"] == "STATE_RUNNING" and job["endpoint"] == replica["url"], job
    spec = job["spec"]
    assert spec["workload"] == "WORKLOAD_SERVER" and spec["priority_class"] == "high"
    assert spec["command"][:3] == ["python", "-m", "tunelab.engine"] and "$PORT" in spec["command"]
    assert [m["path"] for m in spec["datasets"]] == ["base", "adapters/ad"]
    assert spec["labels"]["tunelab.dev/deployment"] == "tiny"
    # The replica's server answers the gateway only: it requires the key the gateway derives.
    assert set(spec["env_vars"]) == {"TUNELAB_ENGINE_API_KEY"}
    assert httpx.get(f"{replica['url']}/v1/models", timeout=30).status_code == 401
    assert httpx.get(f"{replica['url']}/health", timeout=30).status_code == 200
    shown = tunelab(env, "model", "get", "tiny")
    assert "dep-tiny-0" in shown.stdout and replica["url"] in shown.stdout, shown.stdout

    with httpx.Client(base_url=gateway_url, timeout=60, headers=auth) as http:
        plain = http.post(
            "/v2/models/tiny/generate",
            json={"text_input": "hello", "sampling_parameters": '{"max_tokens": 4}'},
        )
        assert plain.status_code == 200 and plain.json()["text_output"].startswith("hello"), plain.text
        adapted = http.post("/v1/completions", json={"model": "ad", "prompt": "the quick", "max_tokens": 3})
        assert adapted.status_code == 200 and adapted.json()["model"] == "ad", adapted.text

    # A restarted gateway keeps the running replica (same job, same attempt) and removes the jobs of
    # its deployments that no longer exist.
    owner = spec["labels"]["tunelab.dev/gateway"]
    orphan = ["--labels", f"tunelab.dev/gateway={owner}", "--labels", "tunelab.dev/deployment=gone"]
    assert cli.run("job", "submit", "--name", "orphan", *orphan, "--", "sleep", "600") == 0
    restart_gateway(env)
    assert wait_ready(cli, "tiny")["replica_statuses"][0]["url"] == replica["url"]
    again = cli.data("job", "get", "dep-tiny-0")
    assert (again["attempt"], again["create_time"]) == (job["attempt"], job["create_time"]), again
    deadline = time.monotonic() + 60
    while cli.ok("job", "get", "orphan") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not cli.ok("job", "get", "orphan")

    # A server that dies is restarted by the trainer on a new port; the gateway follows it there,
    # shows the restart, and starts no server of its own.
    for pid in engine_pids(tmp_path, "tiny"):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 180
    while True:
        d, job = cli.data("model", "get", "tiny"), cli.data("job", "get", "dep-tiny-0")
        moved = d["replica_statuses"][0]
        if d["state"] == "STATE_READY" and job["attempt"] == 2 and moved.get("url") == job.get("endpoint"):
            break
        assert time.monotonic() < deadline, json.dumps([d, job], indent=1)
        time.sleep(0.5)
    assert moved["restarts"] == 1 and moved["restart_reason"].startswith("ServerExited"), moved
    assert len(engine_pids(tmp_path, "tiny")) == 1
    with httpx.Client(base_url=gateway_url, timeout=60, headers=auth) as http:
        assert http.post("/v2/models/tiny/generate", json={"text_input": "hello"}).status_code == 200

    # A base that is no model is refused before any job is queued, in one line naming it.
    refused = tunelab(env, "model", "deploy", "notes", "--base", "notes", *workload)
    assert refused.returncode == 1
    assert "datasets/notes/versions/1 is not a model: it has no config.json" in refused.stdout, refused.stdout
    assert "Traceback" not in refused.stdout + refused.stderr
    assert not cli.ok("job", "get", "dep-notes-0")

    # `model rm` cancels the replica's job (the engine gets SIGTERM), then deletes it.
    seen: list[str] = []
    watcher = watch_states(trainer, read_token(Path(env["TUNELAB_DATA_DIR"])), "jobs/dep-tiny-0", seen)
    assert engine_pids(tmp_path, "tiny")
    time.sleep(0.5)  # the watch has sent the job as it is (RUNNING)
    assert cli.run("model", "rm", "tiny") == 0
    watcher.join(60)
    assert seen[0] == "STATE_RUNNING" and "STATE_CANCELLING" in seen, seen
    assert seen[-1] in ("STATE_CANCELLED", "NOT_FOUND"), seen
    assert not cli.ok("job", "get", "dep-tiny-0")
    deadline = time.monotonic() + 30
    while engine_pids(tmp_path, "tiny") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not engine_pids(tmp_path, "tiny")

    # Removing the FAILED deployments deletes the job of the one that had one.
    assert cli.run("model", "rm", "broken") == 0 and cli.run("model", "rm", "notes") == 0
    assert not cli.ok("job", "get", "dep-broken-0")
    assert cli.data("model", "ls") == []
