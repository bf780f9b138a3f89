"""Dataset mounts in the working directory: where they go (never outside it), materializing them,
and committing output mounts as new dataset versions.

A commit pushes a hard-link snapshot of the output directory that skips what a writer has not
finished (``.tmp-*`` and ``.trash-*`` names, as the LoRA recipe's checkpoints use), so the
upload sees a stable view while training goes on. Unchanged files keep their links between
commits, so the client's hash cache does not hash them again.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunelab.cli.clients.datasets import DatasetClient
from tunelab.common.storage.manifest import Manifest
from tunelab.common.storage.materialize import MARKER, read_marker
from tunelab.trainer.v1 import trainer_pb2 as pb

UNFINISHED = (".tmp-", ".trash-")


class MountError(Exception):
    """A mount that cannot be placed (its path escapes the working directory, ...)."""


@dataclass(frozen=True)
class Mount:
    dataset_id: str
    start_version: str  # the version to materialize; "" for an output starting empty
    path: Path
    spec_path: str
    output: bool


def dataset_id(ref: str) -> str:
    return ref.removeprefix("datasets/").split("/", 1)[0]


def place(working_dir: Path, path: str) -> Path:
    """The mount's directory; it must stay inside the working directory, symbolic links included."""
    root = Path(os.path.realpath(working_dir))
    target = Path(os.path.normpath(working_dir / path))
    parent = Path(os.path.realpath(target.parent))
    real = parent / target.name
    if real == root or root not in real.parents:
        raise MountError(
            f"dataset mount path {path!r} resolves to {real}, outside the working directory {root}"
        )
    return target


def plan(spec: pb.JobSpec) -> list[Mount]:
    work = Path(spec.working_dir)
    return [
        Mount(
            dataset_id(m.dataset),
            m.resolved_version,
            place(work, m.path),
            m.path,
            m.mode == pb.DatasetMount.MODE_OUTPUT,
        )
        for m in spec.datasets
    ]


def materialize(client: DatasetClient, mount: Mount) -> str:
    """Puts the mount's start version in place; returns a line for the log."""
    if not mount.start_version:
        return _empty_output(mount)
    r = client.pull(mount.start_version, mount.path, copy=mount.output)
    how = "already in place" if r.unchanged else f"{r.bytes_fetched} bytes downloaded"
    kind = "output, starting from" if mount.output else "input"
    return f"{mount.spec_path}: {kind} {mount.start_version} ({r.files} files, {how})"


def _empty_output(mount: Mount) -> str:
    """An output with nothing committed yet starts empty, marked as tunelab's (as a pull marks
    it), so a later attempt may replace it with what this one commits."""
    path = mount.path
    if path.is_dir() and any(path.iterdir()) and read_marker(path) is None:
        raise MountError(
            f"{path} is not empty and was not made by tunelab: an output mount needs an empty or new "
            "directory (move the files, or mount the output elsewhere)"
        )
    path.mkdir(parents=True, exist_ok=True)
    if read_marker(path) is None:
        marker = {"digest": Manifest([]).digest(), "label": f"datasets/{mount.dataset_id} (empty)"}
        (path / MARKER).write_text(json.dumps(marker))
    return f"{mount.spec_path}: output dataset {mount.dataset_id}, starting empty"


def snapshot(src: Path, dst: Path) -> None:
    """Makes ``dst`` mirror ``src``'s finished files as hard links (copies across filesystems)."""
    wanted: dict[str, str] = {}
    for folder, dirs, files in os.walk(src):
        dirs[:] = [d for d in dirs if not d.startswith(UNFINISHED)]
        rel_dir = os.path.relpath(folder, src)
        for name in files:
            if not name.startswith(UNFINISHED) and name != MARKER:
                rel = os.path.normpath(os.path.join(rel_dir, name))
                wanted[rel] = os.path.join(folder, name)
    dst.mkdir(parents=True, exist_ok=True)
    for folder, _, files in os.walk(dst, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            source = wanted.get(os.path.relpath(path, dst))
            if source is None or not _same(source, path):
                os.unlink(path)
        if folder != str(dst) and not os.listdir(folder):
            os.rmdir(folder)
    for rel, source in wanted.items():
        target = dst / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
