"""Fixtures for the ChatGLM3 import: the fixture checkpoint laid out like a download of THUDM/chatglm3-6b.

Tests that need THUDM's own code (the fixture's `modeling_chatglm.py`, `tokenization_chatglm.py`) load
it from `../shared/fixtures/chatglm3-6b-tiny/` beside the repository (or `$TUNELAB_CHATGLM3_FIXTURE`)
and skip with the reason when it is absent. THUDM's code is loaded, never copied into the project.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # other suites run on the same small machine

REPO = Path(__file__).resolve().parents[2]


def chatglm3_fixture_dir() -> Path | None:
    configured = os.environ.get("TUNELAB_CHATGLM3_FIXTURE")
    path = Path(configured) if configured else REPO.parent / "shared" / "fixtures" / "chatglm3-6b-tiny"
    return path if (path / "modeling_chatglm.py").is_file() else None


@pytest.fixture(scope="session")
def chatglm3_dir() -> Path:
    """THUDM's chatglm3-6b layout with tiny sizes (read-only: copy it before changing anything)."""
    path = chatglm3_fixture_dir()
    if path is None:
        pytest.skip(
            "the ChatGLM3 fixture (../shared/fixtures/chatglm3-6b-tiny, or $TUNELAB_CHATGLM3_FIXTURE) "
            "is absent: these tests compare against THUDM's own code, which the project never copies"
        )
    return path
