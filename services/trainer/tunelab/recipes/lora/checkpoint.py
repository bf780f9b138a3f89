"""Atomic step checkpoints in the output directory, keep-last-K, and resume from the last complete one.

Layout of OUTPUT_DIR (training_args.output_dir):

    checkpoint-<step>/   adapter_config.json, adapter_model.safetensors   (a PEFT adapter, loadable as is)
                         optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json
    .tmp-checkpoint-<step>-<pid>/   being written; renamed to checkpoint-<step> when complete
    adapter_config.json, adapter_model.safetensors, tokenizer files, run_summary.json   (final adapter)
    merged/              optional: the base model with the adapter folded in

A checkpoint directory is complete when all its files exist and trainer_state.json (written last)
names its step; since a checkpoint only gets its name by an atomic rename, a crash leaves a `.tmp-`
directory, never a half-written `checkpoint-N`. Anything else named checkpoint-N but incomplete (from
another tool, a full disk, a copy) is ignored when resuming and replaced when that step is saved again.
Whoever copies OUTPUT_DIR elsewhere while training runs should skip names starting with `.tmp-`/`.trash-`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tunelab.recipes.lora.errors import CheckpointError, ModelError
from tunelab.recipes.lora.targets import retie

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
STATE = "trainer_state.json"
REQUIRED = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    STATE,
)
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointManager:
    def __init__(self, output_dir: Path, keep: int | None = None) -> None:
        self.output_dir, self.keep = output_dir, keep

    def scan(self) -> tuple[list[tuple[int, Path]], list[Path]]:
        """(complete checkpoints sorted by step, incomplete checkpoint-N directories)."""
        complete, incomplete = [], []
        if not self.output_dir.is_dir():
            return [], []
        for entry in self.output_dir.iterdir():
            match = _NAME.match(entry.name)
            if not match or not entry.is_dir():
                continue
            step = int(match.group(1))
            (complete.append((step, entry)) if is_complete(entry, step) else incomplete.append(entry))
        return sorted(complete), sorted(incomplete)

    def latest(self) -> tuple[int, Path] | None:
        complete, incomplete = self.scan()
        for path in incomplete:
            log.warning("ignoring %s: it is an incomplete checkpoint", path)
        return complete[-1] if complete else None

    def find(self, step: int) -> Path:
        complete, _ = self.scan()
        for s, path in complete:
            if s == step:
                return path
        have = ", ".join(str(s) for s, _ in complete) or "none"
        raise CheckpointError(
            f"no complete checkpoint-{step} in {self.output_dir} (complete checkpoints: {have})"
        )

    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Run `write(tmp_dir)`, then publish tmp_dir as checkpoint-<step> atomically; rotate old ones."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.output_dir / f".tmp-{PREFIX}{step}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            write(tmp)
            _fsync_tree(tmp)
            final = self.output_dir / f"{PREFIX}{step}"
            if final.exists():  # an earlier run's or a broken checkpoint of the same step
                _remove(final)
            os.rename(tmp, final)
            _fsync_dir(self.output_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._rotate(keep_step=step)
        return final

    def _rotate(self, keep_step: int) -> None:
        if self.keep is None:
            return
        complete, _ = self.scan()
        old = [(s, p) for s, p in complete if s != keep_step]
        for _, path in old[: max(0, len(complete) - self.keep)]:
            _remove(path)

    def remove_all(self) -> list[Path]:
        """Delete every checkpoint-N (complete or not) and stale temporary directories: a fresh start."""
        complete, incomplete = self.scan()
        removed = [p for _, p in complete] + incomplete
        for path in removed:
            _remove(path)
        self.remove_stale_temporaries()
        return removed

    def remove_stale_temporaries(self) -> None:
        if self.output_dir.is_dir():
            for entry in self.output_dir.iterdir():
                if entry.is_dir() and entry.name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(entry, ignore_errors=True)


def is_complete(path: Path, step: int) -> bool:
    if not all((path / name).is_file() for name in REQUIRED):
        return False
    try:
        return bool(json.loads((path / STATE).read_text())["step"] == step)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def read_state(path: Path) -> dict[str, Any]:
    return dict(json.loads((path / STATE).read_text()))


def write_state(path: Path, state: dict[str, Any]) -> None:
    (path / STATE).write_text(json.dumps(state, indent=2, ensure_ascii=False))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def finalize_adapter(path: Path, base_model_name: str) -> None:
    """Make a PEFT adapter directory servable by vLLM --lora-modules, or fail saying why it isn't."""
    from safetensors import safe_open

    (path / "README.md").unlink(missing_ok=True)  # PEFT's boilerplate card, with the absolute base path
    config_path = path / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = base_model_name
    config["modules_to_save"] = None
    config["revision"] = None
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    bad = [k for k in keys if not re.search(r"\.lora_[AB]\.weight$", k) or "embed" in k or "lm_head" in k]
    if bad:
        raise ModelError(f"the adapter has tensors vLLM would reject: {', '.join(bad[:5])}")


Resume = str | int  # "auto" (no argument, or yes), "no", or a checkpoint step


def resolve_resume(arg: str | None) -> Resume:
    """ChatGLM3's 4th argument, with its bugs fixed: empty or yes -> resume from the last complete
    checkpoint if there is one, else start; no -> start over (it used to skip training); N -> checkpoint-N."""
    text = (arg or "").strip().lower()
    if text in ("", "yes", "auto"):
        return "auto"
    if text == "no":
        return "no"
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise CheckpointError(f"the resume argument must be yes, no or a checkpoint step (like 500), got {arg!r}")


def write_training_state(tmp: Path, model: Any, optimizer: Any, scheduler: Any, base_model: str) -> None:
    """Adapter, optimizer, scheduler and RNG into `tmp` (trainer_state.json is written by the caller)."""
    model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
    finalize_adapter(tmp, base_model)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng_state.pth")


def load_training_state(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore what write_training_state saved; returns trainer_state.json."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    result: Any = set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"{path} has weights this LoRA model lacks: {result.unexpected_keys[:3]}")
    retie(model)  # q/k/v sharing one lora_A (ChatGLM3's query_key_value) stay shared
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(path / "rng_state.pth", weights_only=True))
    return read_state(path)


def publish_adapter(model: Any, tokenizer: Any, output_dir: Path, base_model: str) -> None:
    """The final adapter (+ tokenizer and chat template) at the root of output_dir, for
    `vllm serve BASE --enable-lora --lora-modules NAME=OUTPUT_DIR`. Files are replaced one by one,
    adapter_config.json last, so its presence means the adapter beside it is complete."""
    tmp = output_dir / f".tmp-adapter-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
    finalize_adapter(tmp, base_model)
    tokenizer.save_pretrained(tmp)
    _fsync_tree(tmp)
    (output_dir / "adapter_config.json").unlink(missing_ok=True)
    for entry in sorted(tmp.iterdir(), key=lambda e: e.name == "adapter_config.json"):
        os.replace(entry, output_dir / entry.name)
    tmp.rmdir()


def save_merged(model: Any, tokenizer: Any, output_dir: Path) -> Path:
    """OUTPUT_DIR/merged: the base model with the adapter folded in (for servers without LoRA)."""
    final, tmp = output_dir / "merged", output_dir / f".tmp-merged-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    merged = model.merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if final.exists():
        _remove(final)
    os.rename(tmp, final)
    return final


def _remove(path: Path) -> None:
    """Rename out of the way first, so no reader sees a half-deleted checkpoint under its real name."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    for entry in path.rglob("*"):
        if entry.is_file():
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
