"""Metrics as JSON lines, one object per event, for the job agent to relay.

Every line is a JSON object with `event` and `time` (unix seconds). Events:
- `start`: max_steps, resumed_from (step or null), model, device, world_size, dtype, packing,
  samples_per_step (all ranks), profile, compile, gradient_checkpointing, micro_batch_tokens (per
  rank), trainable_params, total_params, train_samples, val_samples, truncated_prompts, truncated_answers
- `train` (every logging_steps): step, max_steps, epoch, loss, lr, grad_norm, tokens_per_second (real
  tokens, no padding), samples_per_second, tokens and window_seconds (what the rates are made of),
  gpu_memory_gb and gpu_memory_reserved_gb (peaks since the last line, GiB; null on CPU), progress
  (percent), eta_seconds, elapsed_seconds
- `eval`: step, split (validation or test), loss, and with generation rouge-1, rouge-2, rouge-l,
  bleu-4 (scaled like ChatGLM3's recipe: ROUGE x100, BLEU-4 not), generated (rows scored)
- `checkpoint`: step, path;  `done`: step, adapter_dir, train_runtime_seconds
- `failed`: step, reason;  `stopped`: step, reason (SIGTERM: a checkpoint was written first)
The stream goes to stdout (logs go to stderr) and, with --metrics-file, to that file as well. Under
torchrun only rank 0 writes it, for the whole run: tokens, samples and the loss are summed over the
ranks (tokens_per_second is the global rate); gpu_memory_* are rank 0's.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import IO, Any, Protocol

import torch

from tunelab.recipes.lora.errors import TrainingFailed


class MetricsSink(Protocol):
    def emit(self, event: str, **fields: Any) -> None: ...


class JsonLinesMetrics:
    """Writes each event as one flushed JSON line to stdout and/or a file."""

    def __init__(self, path: str | Path | None = None, stream: IO[str] | None = sys.stdout) -> None:
        self._stream = stream
        self._file = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **{k: _clean(v) for k, v in fields.items()}}
        line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
        for out in (self._stream, self._file):
            if out is not None:
                out.write(line)
                out.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class NullMetrics:
    """Drops every event (the ranks other than 0 of a multi-process run)."""

    def emit(self, event: str, **fields: Any) -> None:
        pass


class MemoryMetrics:
    """Keeps events in a list (tests, embedding the recipe)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def emit(self, event: str, **fields: Any) -> None:
        self.records.append({"event": event, **fields})


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else str(value)
    return value


def check_finite(loss: float, grad_norm: float, step: int, lr: float) -> None:
    """Stop the run when the loss or the gradient norm is NaN or inf (before the optimizer step)."""
    for name, value in (("loss", loss), ("gradient norm", grad_norm)):
        if not math.isfinite(value):
            raise TrainingFailed(
                f"the {name} became {value} at step {step} (learning rate {lr:.3g}); lower "
                "training_args.learning_rate, check the data and the model weights, or resume from an "
                "earlier checkpoint"
            )


def gpu_memory(device: torch.device) -> dict[str, float | None]:
    """Peak GPU memory allocated (tensors) and reserved (by the allocator) since the last call, in GiB."""
    if device.type != "cuda":
        return {"gpu_memory_gb": None, "gpu_memory_reserved_gb": None}
    peaks: dict[str, float | None] = {
        "gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30,
        "gpu_memory_reserved_gb": torch.cuda.max_memory_reserved(device) / 2**30,
    }
    torch.cuda.reset_peak_memory_stats(device)
    return peaks


class Progress:
    """Throughput over the current logging window; ETA from this process's average step time."""

    def __init__(self, start_step: int, max_steps: int) -> None:
        self.start_step, self.max_steps = start_step, max_steps
        self.started = self.window_started = time.perf_counter()
        self.tokens = self.samples = 0
        self.loss_sum = self.paused = 0.0
        self.loss_tokens = 0

    def add(self, tokens: int, samples: int, loss_sum: float, loss_tokens: int) -> None:
        self.tokens += tokens
        self.samples += samples
        self.loss_sum += loss_sum
        self.loss_tokens += loss_tokens

    def pause(self) -> contextlib.AbstractContextManager[None]:
        """Time spent inside (evaluation, checkpoints) does not count in tokens_per_second."""
        return _Pause(self)

    def window(self, step: int) -> dict[str, Any]:
        """Fields for a `train` line; resets the window."""
        now = time.perf_counter()
        seconds = max(now - self.window_started - self.paused, 1e-9)
        elapsed = now - self.started
        done = max(step - self.start_step, 1)
        fields = {
            "loss": self.loss_sum / max(self.loss_tokens, 1),
            "tokens_per_second": self.tokens / seconds,
            "samples_per_second": self.samples / seconds,
            "tokens": self.tokens,
            "window_seconds": seconds,
            "progress": 100.0 * step / self.max_steps,
            "eta_seconds": elapsed / done * (self.max_steps - step),
            "elapsed_seconds": elapsed,
        }
        self.window_started, self.paused = now, 0.0
        self.tokens = self.samples = self.loss_tokens = 0
        self.loss_sum = 0.0
        return fields


class _Pause(contextlib.AbstractContextManager[None]):
    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.progress.paused += time.perf_counter() - self.started
