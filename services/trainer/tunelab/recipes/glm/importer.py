"""One import: a ChatGLM3 checkpoint folder (as downloaded) -> a native `glm` model folder, or nothing.

The result is assembled in a staging directory inside the destination (``.tmp-importing``, which
output commits skip; inside, so that moving it in is a rename within one mount) and moved into
place only when every step has passed: the job agent commits the destination as a dataset version
even when the command fails, so a failed import must leave it untouched (empty), never half-written.
`tunelab-import.json` records where the model came from and what converted it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.recipes.glm.errors import CheckpointError

# Bumped whenever the converter's output changes for the same input.
CONVERTER_VERSION = "1"
PROVENANCE_FILE = "tunelab-import.json"
STAGING = ".tmp-importing"
# Small files of a download that travel with the model (licences, the model card).
CARRIED = ("README.md", "MODEL_LICENSE", "LICENSE", "LICENSE.txt", "NOTICE")

Progress = Callable[[str, int, int], None]  # (what, done, total)


def import_checkpoint(
    src: Path, dst: Path, *, source_ref: str = "", progress: Progress | None = None
) -> dict[str, Any]:
    """Convert `src` into `dst` (created, or an existing empty directory); returns the provenance."""
    from tunelab.recipes.glm.config import glm_config, read_config
    from tunelab.recipes.glm.tokenizer import convert_tokenizer
    from tunelab.recipes.glm.weights import convert_weights

    started = time.time()
    chatglm = read_config(src)
    glm_config(chatglm, stop_token_ids=[])  # refuses what can't be imported exactly, before any work
    # A job's output mount starts from the dataset's last version: an earlier import is replaced
    # (the new version holds only this one), anything else is refused rather than overwritten.
    previous = dst.exists() and any(not _bookkeeping(p) for p in dst.iterdir())
    if previous and not (dst / PROVENANCE_FILE).is_file():
        raise CheckpointError(f"{dst} is not empty and holds no earlier import: import into an empty folder")
    staging = dst / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        tokens = convert_tokenizer(src, staging, model_max_length=int(chatglm.get("seq_length") or 0))
        weights = convert_weights(src, staging, stop_token_ids=list(tokens.stop_ids), progress=progress)
        for name in CARRIED:
            if (src / name).is_file():
                shutil.copyfile(src / name, staging / name)
        provenance = {
            "source": source_ref or str(src.name),
            "source_model_type": "chatglm",
            "source_files": _files(src),
            "architecture": "GlmForCausalLM",
            "converter": "tunelab.recipes.glm",
            "converter_version": CONVERTER_VERSION,
            "transformers_version": _version("transformers"),
            "tokenizer": tokens.as_dict(),
            "weights": weights.as_dict(),
            "seconds": round(time.time() - started, 1),
        }
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, ensure_ascii=False) + "\n")
        for item in [p for p in dst.iterdir() if not _bookkeeping(p)] if previous else []:
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        for item in staging.iterdir():
            item.rename(dst / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return provenance


def _bookkeeping(path: Path) -> bool:
    """The job agent's own files in a mounted folder (`.tunelab-manifest.json`) and this import's
    staging directory: not content."""
    return path.name.startswith(".tunelab-") or path.name == STAGING


def _files(src: Path) -> list[dict[str, Any]]:
    return [
        {"name": p.name, "bytes": p.stat().st_size}
        for p in sorted(src.iterdir())
        if p.is_file() and not _bookkeeping(p)
    ]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return ""
