"""Crash and resume: SIGKILL mid-run, then continue from the last complete checkpoint at the same step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recipehelpers import LORA_YAML
from tunelab.recipes.lora.checkpoint import CheckpointManager

Run = Callable[..., tuple[int, list[dict[str, Any]]]]

# Constant LR so that runs of different max_steps follow the same trajectory; no eval, to stay fast.
COMMON = [
    "training_args.learning_rate=5e-3",
    "training_args.lr_scheduler_type=constant",
    "training_args.logging_steps=1",
    "training_args.save_steps=5",
    "training_args.save_total_limit=3",
    "training_args.eval_strategy=no",
    "data_config.test_file=null",
]


def losses(records: list[dict[str, Any]]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if r["event"] == "train"}


def test_resume_after_sigkill(run_recipe: Run, data_dir: Path, tiny_model: Path, tmp_path: Path) -> None:
    output, metrics = tmp_path / "output", tmp_path / "killed.jsonl"
    argv = [sys.executable, "-m", "tunelab.recipes.lora", str(data_dir), str(tiny_model), str(LORA_YAML)]
    argv += ["--metrics-file", str(metrics)]
    for item in [*COMMON, "training_args.max_steps=100000", f"training_args.output_dir={output}"]:
        argv += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env)
        try:
            deadline = time.monotonic() + 180
            while not any(r["event"] == "checkpoint" and r["step"] >= 10 for r in _read(metrics)):
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint-10 within 180 s"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)  # mid-run: no chance to clean up
        finally:
            proc.kill()
            proc.wait()
    killed = _read(metrics)
    last_complete = max(r["step"] for r in killed if r["event"] == "checkpoint")
    assert max(losses(killed)) >= last_complete
    manager = CheckpointManager(output)
    assert manager.latest() == (last_complete, output / f"checkpoint-{last_complete}")

    # What a crash in the middle of some other writer leaves behind: ignored, then replaced or cleaned.
    half = output / f"checkpoint-{last_complete + 5}"
    half.mkdir()
    (half / "adapter_config.json").write_text("{}")
    (output / f".tmp-checkpoint-{last_complete + 10}-1").mkdir()

    end = last_complete + 8
    code, resumed = run_recipe(data_dir, output, *COMMON, f"training_args.max_steps={end}", resume="yes")
    assert code == 0
    start = next(r for r in resumed if r["event"] == "start")
    assert start["resumed_from"] == last_complete
    assert min(losses(resumed)) == last_complete + 1 and max(losses(resumed)) == end
    assert (half / "trainer_state.json").exists()  # step last_complete + 5 was saved again, complete
    assert not list(output.glob(".tmp-*"))

    # The same steps without a crash give the same losses: model, optimizer, RNG and data order all resumed.
    code, reference = run_recipe(data_dir, tmp_path / "reference", *COMMON, f"training_args.max_steps={end}")
    assert code == 0
    expected = losses(reference)
    for step, loss in losses(resumed).items():
        assert abs(loss - expected[step]) < 1e-4 * max(1.0, abs(expected[step])), (step, loss, expected[step])
    for step, loss in losses(killed).items():
        if step <= end:
            assert abs(loss - expected[step]) < 1e-4 * max(1.0, abs(expected[step])), (
                step,
                loss,
                expected[step],
            )


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def test_resume_refuses_a_checkpoint_of_another_lora_shape(
    run_recipe: Run, data_dir: Path, tmp_path: Path
) -> None:
    steps = ["training_args.max_steps=2", *COMMON, "training_args.save_steps=1"]
    assert run_recipe(data_dir, tmp_path / "out", *steps)[0] == 0
    code, records = run_recipe(data_dir, tmp_path / "out", *steps, "peft_config.r=4")
    assert code == 2 and "pass `no` to start over" in records[-1]["reason"]
    code, records = run_recipe(data_dir, tmp_path / "out", *steps, "peft_config.r=4", resume="no")
    assert code == 0 and records[0]["resumed_from"] is None
