"""The seed's fine-tuning job through the whole service on the embedded stack: AdvertiseGen (a
generated sample) uploaded and converted to conversations, a tiny model as a dataset, an empty
output dataset; submit → agent → `python -m tunelab.recipes.lora` → checkpoints → output dataset
versions, with the loss going down and the metrics relayed to Prometheus. Then a SIGKILL of the
recipe mid-run, and the restart policy resuming it from the last checkpoint at the same step."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

import tunelab.recipes.lora
from jobhelpers import FAILED, RUNNING, SUCCEEDED, log_text, spec, wait_for, wait_until
from tunelab.datasets.v1 import datasets_pb2 as dpb
from tunelab.recipes import advertisegen_sample
from tunelab.recipes.tinymodel import build_tiny_model
from tunelab.trainer.v1 import trainer_pb2 as pb

LORA_YAML = str(Path(tunelab.recipes.lora.__file__).parent / "configs" / "lora.yaml")
# lora.yaml as shipped, shrunk for a CPU: the overrides a user would pass with --set.
SMALL = [
    "training_args.learning_rate=5e-3",
    "training_args.lr_scheduler_type=constant",
    "training_args.per_device_train_batch_size=4",
    "training_args.save_total_limit=3",
    "data_config.test_file=null",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    model = build_tiny_model(root / "tiny-llama", advertisegen_sample.corpus(), "llama")
    # 8 distinct ads repeated, so that a 64-wide model visibly learns in a few dozen steps
    rows = advertisegen_sample.generate(8, seed=0)
    adgen = root / "AdvertiseGen"
    adgen.mkdir()
    (adgen / "train.json").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows * 4))
    (adgen / "dev.json").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:4]))
    return {"model": model, "adgen": adgen}


def publish(datasets: Any, inputs: dict[str, Path]) -> None:
    """What a user does first: upload the model and AdvertiseGen, convert it, make an output."""
    upload = dpb.Source(upload=dpb.UploadSource())
    datasets.create("tiny-llama", upload)
    datasets.push("tiny-llama", inputs["model"])
    datasets.create("advertisegen", upload)
    datasets.push("advertisegen", inputs["adgen"])
    converted = datasets.transform("advertisegen", "advertisegen-to-conversations", "advertisegen-conv")
    assert converted.state == dpb.DatasetVersion.STATE_READY, converted.error
    datasets.create("output", dpb.Source(empty=dpb.EmptySource()))


def lora_job(*overrides: str, **fields: Any) -> pb.JobSpec:
    command = ["python", "-m", "tunelab.recipes.lora", "data/AdvertiseGen_fix", "./tiny-llama", LORA_YAML]
    for item in [*SMALL, *overrides]:
        command += ["--set", item]
    mounts = [
        pb.DatasetMount(dataset="datasets/advertisegen-conv", path="data/AdvertiseGen_fix"),
        pb.DatasetMount(dataset="datasets/tiny-llama", path="tiny-llama"),
        pb.DatasetMount(dataset="datasets/output", path="output"),
    ]
    return spec(command, datasets=mounts, priority_class="high", labels={"job_type": "pytorch"}, **fields)


def events(text: str, attempt_lines: list[str] | None = None) -> list[dict[str, Any]]:
    lines = attempt_lines if attempt_lines is not None else text.splitlines()
    return [json.loads(line) for line in lines if line.startswith('{"event"')]


def test_lora_job_end_to_end(trainer_process, inputs: dict[str, Path]) -> None:
    _, stack = trainer_process
    client, datasets = stack.client, stack.datasets
    publish(datasets, inputs)
    scraped: list[str] = []
    stop = threading.Event()

    def scrape() -> None:  # the relayed training metrics, while the job runs
        url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
        while not stop.is_set():
            body = urllib.request.urlopen(url, timeout=5).read().decode()
            if 'tunelab_trainer_job_loss{job="jobs/lora"}' in body:
                scraped.append(body)
                return
            stop.wait(0.2)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    overrides = ["training_args.max_steps=30", "training_args.logging_steps=5", "training_args.save_steps=10"]
    overrides += ["training_args.per_device_train_batch_size=16"]  # slow enough to scrape while it trains
    overrides += ["training_args.eval_steps=30", "training_args.per_device_eval_batch_size=4"]
    overrides += ["training_args.generation_config.max_new_tokens=8"]
    job = client.submit(lora_job(*overrides, resources=pb.Resources(cpu_millis=1000)), "lora")
    done = wait_for(client, job.name, timeout=240)
    stop.set()
    scraper.join(10)
    logs = log_text(client, job.name)
    assert done.state == SUCCEEDED, logs[-3000:]

    points = [p for p in client.metrics(job.name) if p.HasField("loss")]
    assert [p.step for p in points] == [5, 10, 15, 20, 25, 30]
    assert points[-1].loss < points[0].loss * 0.8, [p.loss for p in points]
    assert points[-1].progress == 1.0 and points[0].total_steps == 30
    assert points[0].tokens_per_second > 0
    assert "eval_loss" in done.latest_eval_scores and "rouge-1" in done.latest_eval_scores
    assert done.latest_metrics.step == 30
    assert scraped and 'tunelab_trainer_job_tokens_per_second{job="jobs/lora"}' in scraped[0]
    assert 'tunelab_trainer_jobs{state="running"} 1.0' in scraped[0]
    assert 'tunelab_trainer_queue_running_jobs{queue="default"} 1.0' in scraped[0]

    output = next(m for m in done.spec.datasets if m.path == "output")
    assert output.mode == pb.DatasetMount.MODE_OUTPUT and output.committed_version
    files = {
        f.path
        for f in datasets.list_files(
            output.committed_version.replace("datasets/", "", 1).replace("/versions/", "@")
        )
    }
    assert "checkpoint-30/adapter_model.safetensors" in files and "adapter_model.safetensors" in files
    assert not any(f.startswith(".tmp-") for f in files)
    inputs_used = {m.path: m.resolved_version for m in done.spec.datasets}
    assert inputs_used["tiny-llama"] == "datasets/tiny-llama/versions/1"


def test_sigkill_mid_run_resumes_from_the_last_checkpoint_at_the_same_step(
    trainer_process, inputs: dict[str, Path]
) -> None:
    _, stack = trainer_process
    client, datasets = stack.client, stack.datasets
    publish(datasets, inputs)
    # Steps of 32 rows, slow enough that commits happen while it trains.
    overrides = ["training_args.max_steps=40", "training_args.logging_steps=1", "training_args.save_steps=5"]
    overrides += ["training_args.per_device_train_batch_size=32", "training_args.eval_strategy=no"]
    job = client.submit(lora_job(*overrides, output_commit_interval={"nanos": 500_000_000}), "resumable")

    def checkpoint_committed() -> bool:
        """A checkpoint at step 10 or later, and a periodic commit made after a checkpoint."""
        lines = log_text(client, job.name).splitlines()
        saved = [i for i, t in enumerate(lines) if t.startswith('{"event": "checkpoint"')]
        steps = [json.loads(lines[i])["step"] for i in saved]
        periodic = [i for i, t in enumerate(lines) if "(periodic" in t]
        return bool(saved and max(steps) >= 10 and periodic and periodic[-1] > saved[0])

    wait_for(client, job.name, [RUNNING], timeout=60)
    wait_until(checkpoint_committed, 180, "a committed checkpoint")
    first_logs = log_text(client, job.name)
    pid = int(re.search(r"\(pid (\d+)\)", first_logs).group(1))  # type: ignore[union-attr]
    os.kill(pid, signal.SIGKILL)  # the recipe's process, mid-run
    done = wait_for(client, job.name, timeout=240)
    assert done.state == SUCCEEDED, log_text(client, job.name)[-3000:]
    assert done.attempt == 2
    assert (done.attempts[0].state, done.attempts[0].reason) == (FAILED, "Killed")

    lines = list(client.logs(job.name))
    by_attempt = {n: [ln.text for ln in lines if ln.attempt == n] for n in (1, 2)}
    first, second = events("", by_attempt[1]), events("", by_attempt[2])
    # The second attempt's output starts from the first one's last commit, and its log says so.
    placed = [t for t in by_attempt[2] if t.startswith("output: ")]
    assert placed and "output, starting from" in placed[0] and "starting empty" not in placed[0], placed
    saved = max(e["step"] for e in first if e["event"] == "checkpoint")
    start = next(e for e in second if e["event"] == "start")
    assert start["resumed_from"] == saved
    losses1 = {e["step"]: e["loss"] for e in first if e["event"] == "train"}
    losses2 = {e["step"]: e["loss"] for e in second if e["event"] == "train"}
    assert min(losses2) == saved + 1 and max(losses2) == 40
    for step in set(losses1) & set(losses2):  # the same steps again give the same losses
        assert abs(losses1[step] - losses2[step]) < 1e-4 * max(1.0, abs(losses1[step])), step
    final = next(m for m in done.spec.datasets if m.path == "output").committed_version
    files = {
        f.path for f in datasets.list_files(final.replace("datasets/", "", 1).replace("/versions/", "@"))
    }
    assert "checkpoint-40/trainer_state.json" in files


def test_recipe_input_errors_fail_the_job_with_their_reason(
    stack, inputs: dict[str, Path], tmp_path: Path
) -> None:
    """Invalid YAML in the job's config (line and column) and an empty training file are the
    recipe's to find; the job fails with its words, as InvalidInput, and is not retried."""
    client, datasets = stack.client, stack.datasets
    publish(datasets, inputs)
    upload = dpb.Source(upload=dpb.UploadSource())
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "lora.yaml").write_text("data_config:\n  train_file: train.json\n  val_file: [dev.json\n")
    datasets.create("configs", upload)
    datasets.push("configs", configs)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.json").write_text("")
    (empty / "dev.json").write_text((inputs["adgen"] / "dev.json").read_text())
    datasets.create("empty-data", upload)
    datasets.push("empty-data", empty)

    bad_yaml = lora_job()
    bad_yaml.command[:] = [
        "python",
        "-m",
        "tunelab.recipes.lora",
        "data/AdvertiseGen_fix",
        "./tiny-llama",
        "configs/lora.yaml",
    ]
    bad_yaml.datasets.append(pb.DatasetMount(dataset="datasets/configs", path="configs"))
    no_rows = lora_job()
    no_rows.datasets[0].dataset = "datasets/empty-data"
    for name, job_spec in (("bad-yaml", bad_yaml), ("no-rows", no_rows)):
        client.submit(job_spec, name)
    yaml_job, rows_job = wait_for(client, "bad-yaml", timeout=120), wait_for(client, "no-rows", timeout=120)
    assert (yaml_job.state, yaml_job.reason, yaml_job.attempt, yaml_job.exit_code) == (
        FAILED,
        "InvalidInput",
        1,
        2,
    )
    assert re.search(r"configs/lora\.yaml:\d+:\d+: invalid YAML", yaml_job.message), yaml_job.message
    assert (rows_job.state, rows_job.reason, rows_job.attempt) == (FAILED, "InvalidInput", 1)
    assert "train.json is empty" in rows_job.message
