"""The files of a ChatGLM3 checkpoint: which shards hold its tensors, their headers, reading them.

`*.safetensors` (through model.safetensors.index.json when there is one) are preferred over
`pytorch_model*.bin` (through pytorch_model.bin.index.json), as a download of THUDM/chatglm3-6b has
both. Shards are memory-mapped and read one tensor at a time; a .bin is loaded with
`weights_only=True` (a checkpoint must not run code). A shard that cannot be read (truncated, corrupt)
raises CheckpointError naming it.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from tunelab.recipes.glm.errors import CheckpointError


@dataclass(frozen=True)
class Shard:
    path: Path
    names: list[str]  # THUDM tensor names in it (as the index lists them; empty without an index)


def find_shards(src: Path) -> list[Shard]:
    """The input files: an index's shards, else model.safetensors / *.safetensors, else the .bin ones."""
    for index_name, single, pattern in (
        ("model.safetensors.index.json", "model.safetensors", "*.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", "pytorch_model*.bin"),
    ):
        index = src / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index_name}: not a valid index ({e!r}); download it again") from e
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index_name}: weight_map is not an object; download it again")
            by_file: dict[str, list[str]] = {}
            for tensor, file in weight_map.items():
                by_file.setdefault(file, []).append(tensor)
            for file in by_file:
                if not (src / file).is_file():
                    raise CheckpointError(f"{index_name}: lists shard {file}, which is missing; download it")
            return [Shard(src / f, names) for f, names in sorted(by_file.items())]
        files = [src / single] if (src / single).is_file() else sorted(src.glob(pattern))
        if files:
            return [Shard(f, []) for f in files]
    raise CheckpointError(
        f"{src}: no weights found (model.safetensors[.index.json], *.safetensors or pytorch_model*.bin); "
        "point at the folder a download of THUDM/chatglm3-6b made"
    )


def read_headers(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    if path.suffix == ".safetensors":
        with _opened(path), safe_open(path, "pt") as f:
            codes = {}
            for name in f.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                piece = f.get_slice(name)
                codes[name] = (tuple(piece.get_shape()), piece.get_dtype())
        for name, (_, code) in codes.items():
            if code not in _ST_DTYPES:
                raise CheckpointError(f"{path.name}: {name} is {code}; only float weights convert")
        return {name: (shape, _ST_DTYPES[code]) for name, (shape, code) in codes.items()}
    return {name: (tuple(t.shape), t.dtype) for name, t in _load_bin(path).items()}


def read_shard(shard: Shard) -> Iterator[tuple[str, torch.Tensor]]:
    """One tensor at a time from a memory-mapped shard."""
    if shard.path.suffix == ".safetensors":
        with _opened(shard.path), safe_open(shard.path, "pt") as f:
            for name in shard.names:
                yield name, f.get_tensor(name)
        return
    state = _load_bin(shard.path)
    for name in shard.names:
        # a copy: the mmapped storage may be shared between tensors, which safetensors refuses
        yield name, state.pop(name).clone(memory_format=torch.contiguous_format)


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    with _opened(path):
        try:  # weights_only: a checkpoint must not run code; mmap: pages are read when used
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # the legacy (non-zip) format cannot be mapped: read it whole
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path.name}: not a state dict of tensors; download it again")
    return state


@contextmanager
def _opened(path: Path) -> Iterator[None]:
    """Turns a shard's read errors (truncated, corrupt, unreadable) into a CheckpointError naming it."""
    try:
        yield
    except (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(
            f"{path.name}: cannot be read ({e}); it is truncated or corrupt: download it again"
        ) from e


_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
