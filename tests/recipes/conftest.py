"""Fixtures for the LoRA recipe: a tiny random model, AdvertiseGen-shaped data, ChatGLM3's lora.yaml, and
the tiny ChatGLM3 fixture in THUDM's layout and imported as transformers' `glm`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from chatglm3helpers import import_chatglm3
from recipehelpers import LORA_YAML, write_jsonl
from tunelab.recipes import advertisegen_sample
from tunelab.recipes.tinymodel import build_tiny_model

torch.set_num_threads(1)  # other suites run on the same small machine


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-llama", advertisegen_sample.corpus(), "llama"
    )


@pytest.fixture(scope="session")
def chatglm3_model(chatglm3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture imported as transformers' `glm` (GlmForCausalLM + fast tokenizer)."""
    return import_chatglm3(chatglm3_dir, tmp_path_factory.mktemp("models") / "chatglm3-6b")


@pytest.fixture(scope="session")
def lora_yaml() -> Path:
    return LORA_YAML


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """AdvertiseGen_fix-style data: 8 distinct conversations repeated 6 times; a 5-row dev set."""
    records = [advertisegen_sample.to_conversations(r) for r in advertisegen_sample.generate(8, seed=0)]
    write_jsonl(tmp_path / "data" / "train.json", records * 6)
    write_jsonl(tmp_path / "data" / "dev.json", records[:5])
    return tmp_path / "data"


@pytest.fixture
def run_recipe(tiny_model: Path, lora_yaml: Path) -> Callable[..., tuple[int, list[dict[str, Any]]]]:
    """Run `python -m tunelab.recipes.lora` in this process; returns (exit code, metrics records)."""
    from tunelab.recipes.lora.__main__ import main

    def run(
        data_dir: Path,
        output_dir: Path,
        *overrides: str,
        resume: str | None = None,
        model: Path | None = None,
    ) -> tuple[int, list[dict[str, Any]]]:
        metrics = output_dir.parent / f"{output_dir.name}-metrics.jsonl"
        metrics.unlink(missing_ok=True)
        argv = [str(data_dir), str(model or tiny_model), str(lora_yaml)] + ([resume] if resume else [])
        argv += ["--metrics-file", str(metrics), "--set", f"training_args.output_dir={output_dir}"]
        for item in overrides:
            argv += ["--set", item]
        code = main(argv)
        records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        return code, records

    return run
