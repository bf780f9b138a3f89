"""Helpers the recipe tests import (``from recipehelpers import …``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tunelab.recipes.lora

LORA_YAML = Path(tunelab.recipes.lora.__file__).parent / "configs" / "lora.yaml"

# lora.yaml as shipped, shrunk to a CPU-sized run: the kind of overrides a user passes with --set.
SHRINK = [
    "training_args.max_steps=40",
    "training_args.learning_rate=5e-3",
    "training_args.logging_steps=5",
    "training_args.save_steps=10",
    "training_args.save_total_limit=2",
    "training_args.eval_steps=20",
    "training_args.per_device_eval_batch_size=4",
    "training_args.generation_config.max_new_tokens=16",
]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
