"""Materializing a layered environment build: verified layer blobs through the local blob cache,
unpacked in order into a sibling temporary directory that replaces the target only when complete.

A layer is a zstd-compressed tar written by the environments service. Members are extracted with
``tarfile``'s ``tar`` filter: nothing lands outside the target, no device files, no set-id bits.
Absolute symbolic links are allowed, because a venv's ``bin/python`` points at its base
interpreter (the image's), which is where the environment runs.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import zstandard

from tunelab.common.storage.atomicdir import replacing

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


def unpack_layer(layer: Path, dest: Path) -> None:
    with (
        layer.open("rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        tar.extractall(dest, filter="tar")


def install(layers: list[Path], target: Path, env_key: str, name: str) -> None:
    """Unpacks ``layers`` in order next to ``target``, then swaps the result into place."""
    with replacing(target, lambda t: read_marker(t) is not None) as staging:
        for layer in layers:
            unpack_layer(layer, staging)
        (staging / MARKER).write_text(json.dumps({"env_key": env_key, "environment": name}))
