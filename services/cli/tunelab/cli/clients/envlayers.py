"""Materializing a layered environment build: verified layer blobs through the local blob cache,
unpacked in order into a sibling temporary directory that replaces the target only when complete.

A layer is a zstd-compressed tar written by the environments service. Members are extracted with
``tarfile``'s ``tar`` filter: nothing lands outside the target, no device files, no set-id bits.
Absolute symbolic links are allowed, because a venv's ``bin/python`` points at its base
interpreter (the image's), which is where the environment runs.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard

from tunelab.common.errors import FailedPrecondition

MARKER = ".tunelab-env.json"


@dataclass
class PullResult:
    path: Path
    env_key: str
    layers: int
    bytes: int  # unpacked
    bytes_fetched: int
    seconds: float
    unchanged: bool = False


def read_marker(target: Path) -> str | None:
    """The env_key a directory was materialized from, if it was."""
    try:
        return str(json.loads((target / MARKER).read_text())["env_key"])
    except (OSError, ValueError, KeyError):
        return None


def check_target(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise FailedPrecondition(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and read_marker(target) is None:
        raise FailedPrecondition(
            f"{target} is not empty and was not made by tunelab: choose an empty or new directory"
        )


def unpack_layer(layer: Path, dest: Path) -> None:
    with (
        layer.open("rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        tar.extractall(dest, filter="tar")


def install(layers: list[Path], target: Path, env_key: str, name: str) -> None:
    """Unpacks ``layers`` in order next to ``target``, then swaps the result into place."""
    check_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        for layer in layers:
            unpack_layer(layer, staging)
        (staging / MARKER).write_text(json.dumps({"env_key": env_key, "environment": name}))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.rename(target, old)
            os.rename(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
