"""Data-parallel training: the recipe under torchrun, 2 CPU processes (gloo), against one process.

One process with gradient_accumulation_steps=2 and two processes with 1 see the same micro-batches per
step; the loss is the mean over all the step's answer tokens, so both must take the same steps.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from recipehelpers import write_jsonl
from tunelab.recipes import advertisegen_sample
from tunelab.recipes.lora.batching import BatchStream, PaddedLayout
from tunelab.recipes.lora.data import IGNORE_INDEX, Sample
from tunelab.recipes.lora.distributed import World
from tunelab.recipes.lora.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

# Padded batches of 2 (48 samples: 24 micro-batches, 12 steps an epoch), no dropout (the same math on
# any rank), a constant learning rate (max_steps does not change the steps taken).
COMMON = [
    "training_args.learning_rate=5e-3",
    "training_args.lr_scheduler_type=constant",
    "training_args.logging_steps=1",
    "training_args.save_steps=7",
    "training_args.eval_steps=7",
    "training_args.per_device_train_batch_size=2",
    "training_args.per_device_eval_batch_size=4",
    "training_args.generation_config.max_new_tokens=8",
    "peft_config.lora_dropout=0",
    "data_config.test_file=null",
]


def events(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in records if r["event"] == name]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp-data")
    records = [advertisegen_sample.to_conversations(r) for r in advertisegen_sample.generate(8, seed=0)]
    write_jsonl(root / "train.json", records * 6)
    write_jsonl(root / "dev.json", records[:5])
    return root


@pytest.fixture(scope="module")
def one_process(
    data: Path, tiny_model: Path, lora_yaml: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[dict[str, Any]]]:
    """The reference: one process, 2 micro-batches a step, 24 steps (two epochs)."""
    from tunelab.recipes.lora.__main__ import main

    root = tmp_path_factory.mktemp("one-process")
    argv = [str(data), str(tiny_model), str(lora_yaml), "no", "--metrics-file", str(root / "metrics.jsonl")]
    for item in [*COMMON, "training_args.gradient_accumulation_steps=2", "training_args.max_steps=24"]:
        argv += ["--set", item]
    assert main([*argv, "--set", f"training_args.output_dir={root / 'out'}"]) == 0
    return root / "out", read_metrics(root / "metrics.jsonl")


def torchrun(
    data: Path, model: Path, yaml: Path, out: Path, *overrides: str, resume: str = "no"
) -> tuple[subprocess.Popen[str], Path]:
    """`torchrun --nproc-per-node 2 -m tunelab.recipes.lora ...` on the CPU; (process, metrics file)."""
    metrics = out.parent / f"{out.name}-metrics.jsonl"
    metrics.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "tunelab.recipes.lora", str(data), str(model), str(yaml), resume]
    cmd += ["--metrics-file", str(metrics), "--set", f"training_args.output_dir={out}"]
    for item in [*COMMON, *overrides]:
        cmd += ["--set", item]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, metrics


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_rank_shares_are_disjoint_and_make_up_the_stream() -> None:
    """Rank r's i-th micro-batch is the stream's i * world + r, across epochs and from any start."""
    samples = [Sample(list(range(3 + i % 5)), [IGNORE_INDEX, *range(2 + i % 5)], 1, "a") for i in range(13)]
    stream = BatchStream(samples, PaddedLayout(2, 0), seed=3)  # 7 micro-batches an epoch
    whole = [b.input_ids.tolist() for _, b in itertools.islice(stream.iterate(start=4), 20)]
    shares = [
        [b.input_ids.tolist() for _, b in itertools.islice(stream.iterate(2, r, 2), 10)] for r in (0, 1)
    ]
    assert [shares[i % 2][i // 2] for i in range(20)] == whole


def test_torchrun_variables_are_checked() -> None:
    assert World.from_env({}) == World() and World.from_env({"WORLD_SIZE": "1"}).main
    assert World.from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}) == World(2, 1, 1)
    with pytest.raises(ConfigError, match="WORLD_SIZE is 2 but RANK is not set: launch with torchrun"):
        World.from_env({"WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="RANK 2 / LOCAL_RANK 0 do not fit WORLD_SIZE 2"):
        World.from_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})


def test_two_processes_take_the_steps_of_one_with_the_same_global_batch(
    data: Path, tiny_model: Path, lora_yaml: Path, tmp_path: Path, one_process: tuple[Path, list[Any]]
) -> None:
    proc, metrics = torchrun(data, tiny_model, lora_yaml, tmp_path / "out", "training_args.max_steps=14")
    code, stdout, stderr = finish(proc)
    assert code == 0, stderr[-3000:]
    records, (ref_out, reference) = read_metrics(metrics), one_process

    start = events(records, "start")
    assert len(start) == 1 and start[0]["world_size"] == 2
    assert start[0]["samples_per_step"] == events(reference, "start")[0]["samples_per_step"] == 4
    train, ref_train = events(records, "train"), events(reference, "train")[:14]
    assert [r["step"] for r in train] == list(range(1, 15))  # once per step: rank 0 alone writes
    assert [r["tokens"] for r in train] == [r["tokens"] for r in ref_train]  # all ranks' tokens
    assert [r["loss"] for r in train] == pytest.approx([r["loss"] for r in ref_train], rel=1e-5)
    assert [r["grad_norm"] for r in train] == pytest.approx([r["grad_norm"] for r in ref_train], rel=1e-4)
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    evals, ref_evals = events(records, "eval"), events(reference, "eval")[:2]
    assert [(r["step"], r["samples"]) for r in evals] == [(7, 5), (14, 5)]
    assert [r["loss"] for r in evals] == pytest.approx([r["loss"] for r in ref_evals], rel=1e-5)
    assert [r["step"] for r in events(records, "checkpoint")] == [7, 14]
    assert len(events(records, "done")) == 1
    assert stdout.count('"event": "train"') == 14  # stdout too: no rank but 0 prints metrics

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("checkpoint-", "."))) == [
        "checkpoint-14",
        "checkpoint-7",
    ]
    assert json.loads((out / "checkpoint-14" / "trainer_state.json").read_text())["world_size"] == 2
    adapter = load_file(str(out / "adapter_model.safetensors"))
    same_step = load_file(str(ref_out / "checkpoint-14" / "adapter_model.safetensors"))
    assert adapter.keys() == same_step.keys()
    for key, value in adapter.items():
        torch.testing.assert_close(value, same_step[key], rtol=1e-4, atol=1e-6)
    assert "[rank 1]" not in stderr.replace("WARNING [rank 1]", "")  # rank 1 logs warnings only


def test_sigterm_stops_every_rank_after_the_same_step_and_the_run_resumes(
    data: Path, tiny_model: Path, lora_yaml: Path, tmp_path: Path, one_process: tuple[Path, list[Any]]
) -> None:
    out = tmp_path / "out"
    overrides = ["training_args.eval_strategy=no", "training_args.max_steps=400"]
    proc, metrics = torchrun(data, tiny_model, lora_yaml, out, *overrides)
    deadline = time.monotonic() + 90
    while not [r for r in read_metrics(metrics) if r["event"] == "train" and r["step"] >= 2]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it to every rank, as a cancel would
    code, _, stderr = finish(proc)
    assert code != 0
    records = read_metrics(metrics)
    stopped = events(records, "stopped")
    assert len(stopped) == 1, stderr[-3000:]
    k = stopped[0]["step"]
    assert 2 <= k <= 20, k  # soon after the signal
    for rank in (0, 1):
        assert f"[rank {rank}] stopped by signal 15 at step {k}" in stderr
    assert events(records, "checkpoint")[-1]["step"] == k and (out / f"checkpoint-{k}").is_dir()
    assert len([r for r in events(records, "checkpoint") if r["step"] == k]) == 1

    proc, metrics = torchrun(
        data,
        tiny_model,
        lora_yaml,
        out,
        "training_args.eval_strategy=no",
        f"training_args.max_steps={k + 2}",
        resume="yes",
    )
    code, _, stderr = finish(proc)
    assert code == 0, stderr[-3000:]
    resumed = read_metrics(metrics)
    assert events(resumed, "start")[0]["resumed_from"] == k
    losses = [r["loss"] for r in events(records, "train") + events(resumed, "train")]
    steps = [r["step"] for r in events(records, "train") + events(resumed, "train")]
    assert steps == list(range(1, k + 3))
    _, reference = one_process
    assert losses == pytest.approx([r["loss"] for r in events(reference, "train")][: k + 2], rel=1e-5)


@pytest.mark.slow
def test_two_processes_train_chatglm3_with_one_shared_lora_A_like_one(
    data: Path, chatglm3_model: Path, lora_yaml: Path, tmp_path: Path
) -> None:
    """ChatGLM3 imported: q/k/v share lora_A; the all-reduce sees it once: both runs take the same steps."""
    from tunelab.recipes.lora.__main__ import main

    steps = ["training_args.max_steps=4", "training_args.eval_strategy=no"]
    argv = [str(data), str(chatglm3_model), str(lora_yaml), "no"]
    argv += ["--metrics-file", str(tmp_path / "one.jsonl")]
    for item in [*COMMON, *steps, "training_args.gradient_accumulation_steps=2"]:
        argv += ["--set", item]
    assert main([*argv, "--set", f"training_args.output_dir={tmp_path / 'one'}"]) == 0
    proc, metrics = torchrun(data, chatglm3_model, lora_yaml, tmp_path / "two", *steps)
    code, _, stderr = finish(proc)
    assert code == 0, stderr[-3000:]
    one, two = events(read_metrics(tmp_path / "one.jsonl"), "train"), events(read_metrics(metrics), "train")
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-4)
    adapter, reference = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("two", "one"))
    assert adapter.keys() == reference.keys()
    for key, value in adapter.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-6)
    for layer in range(2):
        prefix = f"base_model.model.model.layers.{layer}.self_attn"
        q, k, v = (adapter[f"{prefix}.{m}_proj.lora_A.weight"] for m in "qkv")
        assert torch.equal(q, k) and torch.equal(q, v)
