"""Metrics JSON lines on a command's stdout (tunelab.recipes.lora's format) as MetricsPoints.

A line is one JSON object with ``event``: ``train`` lines become training points, ``eval`` lines
evaluation scores (``eval_loss``, ``rouge-1``, ... for the validation split; ``test_…`` for
test), ``failed`` lines say why a run stopped. Other lines, and other events, are plain output.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from tunelab.trainer.v1 import trainer_pb2 as pb

RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d*\]:\s*")
TRAIN_FIELDS = {
    "loss": "loss",
    "lr": "learning_rate",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "tokens_per_second": "tokens_per_second",
    "samples_per_second": "samples_per_second",
    "epoch": "epoch",
}
SKIP = {"event", "time", "step", "max_steps", "split"}


def parse_event(line: str) -> dict[str, Any] | None:
    """The JSON event a line carries, or None for ordinary output."""
    text = RANK_PREFIX.sub("", line).strip()
    if not (text.startswith("{") and '"event"' in text):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("event"), str) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # the recipe writes "nan" / "inf" as strings
        except ValueError:
            return None
    return None


def to_point(record: dict[str, Any]) -> pb.MetricsPoint | None:
    event = record.get("event")
    if event not in ("train", "eval"):
        return None
    point = pb.MetricsPoint(step=int(_number(record.get("step")) or 0))
    if isinstance(record.get("time"), int | float):
        point.time.FromNanoseconds(int(record["time"] * 1e9))
    if (total := _number(record.get("max_steps"))) is not None:
        point.total_steps = int(total)
    if event == "eval":
        split = str(record.get("split") or "validation")
        prefix = "eval_" if split == "validation" else f"{split}_"
        for key, value in record.items():
            number = _number(value)
            if key in SKIP or number is None:
                continue
            name = f"{prefix}{key}" if key == "loss" or split != "validation" else key
            point.eval_scores[name] = number
        return point
    for key, value in record.items():
        number = _number(value)
        if key in SKIP or number is None:
            continue
        if key in TRAIN_FIELDS:
            setattr(point, TRAIN_FIELDS[key], number)
        elif key == "progress":
            point.progress = number / 100.0  # the recipe reports percent
        elif key == "gpu_memory_gb":
            point.gpu_memory_bytes = int(number * 2**30)
        elif key == "eta_seconds" and math.isfinite(number):
            point.eta.FromNanoseconds(int(number * 1e9))
        else:
            point.extra[key] = number
    return point


def failure_reason(record: dict[str, Any], exit_code: int) -> tuple[str, str] | None:
    """(reason, message) of a ``failed`` event: NaNLoss for a non-finite loss, InvalidInput for
    bad input (exit status 2: config, data, model directory), else RecipeFailed."""
    if record.get("event") != "failed":
        return None
    message = str(record.get("reason") or "the recipe failed")
    lowered = message.lower()
    if "became nan" in lowered or "became inf" in lowered or "became -inf" in lowered:
        return "NaNLoss", message
    return ("InvalidInput" if exit_code == 2 else "RecipeFailed"), message
