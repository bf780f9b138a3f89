"""Checkpoints: atomic publication, keep-last-K, and resume only from complete ones."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tunelab.recipes.lora.checkpoint import REQUIRED, STATE, CheckpointManager
from tunelab.recipes.lora.errors import CheckpointError


def writer(step: int, fail_after: int | None = None) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        for i, name in enumerate(REQUIRED):
            if fail_after is not None and i == fail_after:
                raise OSError("disk full")
            content = json.dumps({"step": step}) if name == STATE else "x"
            (tmp / name).write_text(content)

    return write


def names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_keep_last_k(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30, 40):
        manager.save(step, writer(step))
    assert names(tmp_path) == ["checkpoint-30", "checkpoint-40"]
    assert manager.latest() == (40, tmp_path / "checkpoint-40")


def test_a_failed_write_publishes_nothing(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=2)
    manager.save(10, writer(10))
    with pytest.raises(OSError, match="disk full"):
        manager.save(20, writer(20, fail_after=3))
    assert names(tmp_path) == ["checkpoint-10"]  # no checkpoint-20, no leftover .tmp-


def test_incomplete_checkpoints_are_ignored_and_replaced(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    manager.save(10, writer(10))
    half = tmp_path / "checkpoint-20"
    half.mkdir()
    (half / "adapter_config.json").write_text("{}")  # a crash in another tool, a partial copy
    wrong = tmp_path / "checkpoint-30"
    wrong.mkdir()
    writer(29)(wrong)  # all files, but trainer_state.json names another step
    (tmp_path / ".tmp-checkpoint-40-123").mkdir()
    assert manager.latest() == (10, tmp_path / "checkpoint-10")
    with pytest.raises(CheckpointError, match=r"no complete checkpoint-20 .*complete checkpoints: 10"):
        manager.find(20)
    manager.save(20, writer(20))
    assert manager.find(20) == half and (half / "optimizer.pt").exists()
    manager.remove_stale_temporaries()
    assert names(tmp_path) == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    assert len(manager.remove_all()) == 3 and names(tmp_path) == []
