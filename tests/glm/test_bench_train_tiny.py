"""bench/train/run.py --tiny end to end on CPU: the path its GPU run takes, on the fixture's tiny config.

THUDM's model (the fixture's code) with random weights, written as a download (shards, index, config,
tokenizer.model, THUDM's .py files), its loss and the finetune_hf.py baseline on it, the real import,
the imported model's loss (equal to THUDM's in fp32), the recipe's loss and both recipe profiles.
Timings on CPU mean nothing; the flow, the checks and the result file do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_bench_tiny(chatglm3_dir: Path, tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(REPO / "bench" / "train" / "run.py"), "--tiny"]
    cmd += ["--out", str(out), "--work", str(work), "--chatglm-code", str(chatglm3_dir)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    text = (out / "train-tiny.json").read_text()
    assert str(tmp_path) not in text and str(chatglm3_dir) not in text, "machine paths in the result"
    result = json.loads(text)
    assert set(result) >= {"benchmark", "date", "machine", "command", "metrics", "targets", "met"}
    metrics, targets = result["metrics"], result["targets"]
    # The same task on both sides: the same ids, the same weights, the same loss.
    for name in (
        "same_rows",
        "thudm_vs_imported_fp32",
        "loss_check",
        "import_peak_rss_gb",
        "packing_isolated",
    ):
        assert targets[name]["met"], (name, targets[name])
    assert metrics["baseline"]["lora_targets"] == ["query_key_value"]
    assert metrics["checkpoint"]["shards"] == 3 and metrics["import"]["output_shards"] == 3
    assert metrics["import"]["exit_code"] == 0 and metrics["import"]["tokenizer_vocab_size"] == 1209
    assert 140 < metrics["data"]["mean_tokens"] < 160, metrics["data"]
    for mode in ("fast", "low_memory"):
        run = metrics["tunelab"][mode]
        assert run["exit_code"] == 0 and run["steps_measured"] > 0, run
    assert not list(work.glob("chatglm3-6b")) and not list(work.glob("imported")), "checkpoints left behind"
