"""bench/vllm/run.py rehearsed on CPU: the flow its GPU run takes (an adapter from the LoRA recipe,
the gateway deploying it onto an upstream through its gRPC API, the seed's Triton requests, a
streaming chat, the metrics, the direct-against-gateway benchmark), with tunelab's embedded engine in
vLLM's place. Timings on CPU mean nothing here; the flow, the result file and the clean-up do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tunelab.recipes.lora
from tunelab.recipes import advertisegen_sample
from tunelab.recipes.lora.__main__ import main as recipe_main
from tunelab.recipes.tinymodel import build_tiny_model

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "bench" / "vllm" / "run.py"
LORA_YAML = Path(tunelab.recipes.lora.__file__).parent / "configs" / "lora.yaml"


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vllm-bench-inputs")
    base = build_tiny_model(root / "base", advertisegen_sample.corpus(), "llama")
    raw = advertisegen_sample.write_sample(root / "raw", n_train=16, n_dev=2)
    data = advertisegen_sample.write_conversations(raw, root / "data")
    overrides = [
        f"training_args.output_dir={root / 'adapter'}",
        "training_args.max_steps=4",
        "training_args.learning_rate=5e-3",
        "training_args.save_strategy=no",
        "data_config.val_file=null",
        "data_config.test_file=null",
    ]
    argv = [str(data), str(base), str(LORA_YAML)]
    for item in overrides:
        argv += ["--set", item]
    assert recipe_main(argv) == 0
    return base, root / "adapter"


def test_rehearsal_end_to_end(base_and_adapter: tuple[Path, Path], tmp_path: Path) -> None:
    base, adapter = base_and_adapter
    work, out = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, str(RUN), "--engine", "embedded", "--base-model", str(base)]
    cmd += ["--adapter", str(adapter), "--work", str(work), "--out", str(out)]
    cmd += ["--concurrency", "1,4", "--rounds", "1", "--shared-rounds", "1", "--max-tokens", "8"]
    cmd += ["--check-max-tokens", "16"]
    cmd += ["--prompts", "8", "--min-requests", "2", "--per-worker", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    # 3: ran through, some target missed (CPU timings are noise); anything else is a failure.
    assert proc.returncode in (0, 3), proc.stdout[-3000:] + proc.stderr[-3000:]

    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and "vllm-rehearsal.json" in files and "gateway.log" in files, files
    text = (out / "vllm-rehearsal.json").read_text()
    assert str(tmp_path) not in text and str(base.parent) not in text, "machine paths in the result"
    result = json.loads(text)
    assert result["errors"] == []
    assert result["deployment"]["state"] == "STATE_READY"
    failed = [c for c in result["checks"] if not c["ok"]]
    assert len(result["checks"]) == 6 and not failed, failed
    for level in ("c1", "c4"):
        for side in ("direct", "gateway"):
            stats = result["metrics"]["levels"][level][side]
            assert stats["errors"] == 0 and stats["output_tokens"] > 0, stats
        assert result["metrics"]["levels"][level]["comparison"]["throughput_ratio"] > 0
        # The probes read the gateway's own TTFT histogram around the gateway's rounds only.
        gw_means = result["metrics"]["levels"][level]["gateway"]["server_mean_ms"]
        assert gw_means["tunelab_gateway_time_to_first_token_seconds"] > 0, gw_means
        direct_means = result["metrics"]["levels"][level]["direct"]["server_mean_ms"]
        assert "tunelab_gateway_time_to_first_token_seconds" not in direct_means, direct_means
        # Shared rounds: each worker alternates sides, so each side gets as many requests.
        shared = result["metrics"]["levels"][level]["shared"]
        assert shared["direct"]["errors"] == shared["gateway"]["errors"] == 0, shared
        assert shared["direct"]["requests"] == shared["gateway"]["requests"] >= int(level[1:]), shared
        assert result["targets"][f"ttft_p50_added_{level}"]["metric"].endswith("same rounds")
    routes = set(result["gateway_metrics"]["routes"])
    assert {"triton_generate", "triton_generate_stream", "openai_chat", "openai_completions"} <= routes
    assert result["upstream_metrics"]["series"] > 0
    assert result["targets"]["checks"]["met"]

    # Every process the run started is gone.
    for pgid in (work / "pgids").read_text().split():
        with pytest.raises(ProcessLookupError):
            os.killpg(int(pgid), 0)
