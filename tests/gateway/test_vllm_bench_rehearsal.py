"""bench/vllm/run.py rehearsed on CPU: the flow its GPU run takes (a ChatGLM3 in THUDM's layout imported
into transformers' glm, an adapter from the LoRA recipe on it, the gateway deploying it onto an upstream
through its gRPC API, the seed's Triton requests and a streaming chat in ChatGLM3's chat format, the
metrics, the direct-against-gateway benchmark), with tunelab's embedded engine in vLLM's place.
Timings on CPU mean nothing here; the flow, the result file and the clean-up do."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tunelab.recipes.lora
from tunelab.recipes.lora.__main__ import main as recipe_main

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "bench" / "vllm" / "run.py"
LORA_YAML = Path(tunelab.recipes.lora.__file__).parent / "configs" / "lora.yaml"


def _basemodel() -> object:
    spec = importlib.util.spec_from_file_location(
        "bench_vllm_basemodel", REPO / "bench" / "vllm" / "basemodel.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny ChatGLM3 stand-in in THUDM's layout, imported (bench/vllm/basemodel.py), and an adapter."""
    root = tmp_path_factory.mktemp("vllm-bench-inputs")
    base, data = root / "base", root / "data"
    argv = [str(base), str(data), "--size", "tiny", "--train-rows", "16", "--pretrain-steps", "20"]
    assert _basemodel().main(argv) == 0  # type: ignore[attr-defined]
    assert json.loads((base / "config.json").read_text())["model_type"] == "glm"
    overrides = [
        f"training_args.output_dir={root / 'adapter'}",
        "training_args.max_steps=10",
        "training_args.learning_rate=3e-2",
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
    assert len(result["checks"]) == 7 and not failed, failed
    # ChatGLM3's format: the Triton prompt is a user turn, answers never carry a stop string.
    triton = next(c for c in result["checks"] if c["check"].endswith("/generate (the seed's request)"))
    assert "answer" not in triton and triton["chars"] > 0, triton
    assert result["checks"][-1]["answers"] >= 5, result["checks"][-1]
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
