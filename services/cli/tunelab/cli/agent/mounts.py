"""Dataset mounts: where they go in the working directory (the directory itself or a path inside
it, never outside), materializing them into the attempt's staging tree, and snapshots of output
mounts for commits.

Mounts nest as a pod's volumes do: a code dataset at the working directory, its data and output
mounted inside it. They are materialized parents first, and a mount hides what its parent holds
at its path. Marker files (which manifest a directory holds) are kept beside the tree, never in it.

A commit pushes a hard-link snapshot of the output directory that skips what a writer has not
finished (``.tmp-*`` and ``.trash-*`` names, as the LoRA recipe's checkpoints use) and the mounts
nested inside it, so the upload sees a stable view of the output's own files while training goes
on. Unchanged files keep their links between commits, so the client's hash cache does not hash
them again.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tunelab.cli.clients.datasets import DatasetClient
from tunelab.common.storage.manifest import Manifest
from tunelab.common.storage.materialize import MARKER, write_marker
from tunelab.trainer.v1 import trainer_pb2 as pb

UNFINISHED = (".tmp-", ".trash-")


class MountError(Exception):
    """A mount (or the working directory) that cannot be placed: it escapes the working
    directory, or the path cannot be made (the message has the path and the OS error)."""


@dataclass(frozen=True)
class Mount:
    dataset_id: str
    start_version: str  # the version to materialize; "" for an output starting empty
    rel: str  # its path in the working directory: "." for the directory itself, else "a/b"
    path: Path  # where the agent materializes it: the staging tree's ``rel``
    spec_path: str
    output: bool

    @property
    def key(self) -> str:
        """A file name for what is kept about the mount beside the tree (marker, snapshot)."""
        return quote("/" if self.rel == "." else f"/{self.rel}", safe="")

    def inside(self, other: Mount) -> bool:
        """Whether this mount is nested in ``other`` (strictly)."""
        return self.rel != other.rel and (other.rel == "." or self.rel.startswith(other.rel + "/"))


def dataset_id(ref: str) -> str:
    return ref.removeprefix("datasets/").split("/", 1)[0]


def relative(working_dir: str, path: str) -> str:
    """The mount's path in the working directory ("." for the directory itself)."""
    root = posixpath.normpath(working_dir)
    full = posixpath.normpath(posixpath.join(root, path))
    rel = posixpath.relpath(full, root)
    if rel == ".." or rel.startswith("../"):
        raise MountError(
            f"dataset mount path {path!r} resolves to {full}, outside the working directory {root}"
        )
    return rel


def place(tree: Path, rel: str) -> Path:
    """``rel`` in ``tree``; it must stay inside the tree, symbolic links included."""
    target = Path(os.path.normpath(tree / rel))
    root = Path(os.path.realpath(tree))
    if target == Path(os.path.normpath(tree)):
        return target
    real = Path(os.path.realpath(target.parent)) / target.name
    if real != root and root not in real.parents:
        raise MountError(
            f"dataset mount path {rel!r} resolves to {real}, outside the working directory {root}"
        )
    return target


def plan(spec: pb.JobSpec, tree: Path) -> list[Mount]:
    """The job's mounts, parents before children."""
    mounts = []
    for m in spec.datasets:
        rel = relative(spec.working_dir, m.path)
        mode = m.mode == pb.DatasetMount.MODE_OUTPUT
        mounts.append(Mount(dataset_id(m.dataset), m.resolved_version, rel, place(tree, rel), m.path, mode))
    return sorted(mounts, key=lambda m: 0 if m.rel == "." else m.rel.count("/") + 1)


def materialize(client: DatasetClient, mount: Mount, markers: Path, fetch: Path) -> str:
    """Puts the mount's start version at its place in the tree; returns a line for the log.

    The tree is new for each attempt, so anything at the mount's path came from a parent mount
    and is hidden, as a volume mounted there would hide it. The mount at the working directory
    itself is fetched beside the tree and moved in: the tree's own directory is never replaced
    (in a pod it is the working directory's volume)."""
    marker = markers / f"{mount.key}.json"
    try:
        if mount.rel != ".":
            _clear(mount.path)
        if not mount.start_version:
            mount.path.mkdir(parents=True, exist_ok=True)
            write_marker(marker, Manifest([]).digest(), f"datasets/{mount.dataset_id} (empty)")
            return f"{mount.spec_path}: output dataset {mount.dataset_id}, starting empty"
        into = fetch / mount.key if mount.rel == "." else mount.path
        r = client.pull(mount.start_version, into, copy=mount.output, marker=marker)
        if into != mount.path:
            _move_into(into, mount.path)
    except OSError as exc:
        raise MountError(f"cannot place {mount.spec_path} at {mount.path}: {exc}") from None
    kind = "output, starting from" if mount.output else "input"
    fetched = f"{r.files} files, {r.bytes_fetched} bytes downloaded"
    return f"{mount.spec_path}: {kind} {mount.start_version} ({fetched})"


def _clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _move_into(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        os.rename(entry, dst / entry.name)
    src.rmdir()


def nested(mount: Mount, mounts: Iterable[Mount]) -> list[str]:
    """The paths, relative to ``mount``, of the mounts nested inside it."""
    return [
        other.rel if mount.rel == "." else other.rel[len(mount.rel) + 1 :]
        for other in mounts
        if other.inside(mount)
    ]


def snapshot(src: Path, dst: Path, exclude: Iterable[str] = ()) -> None:
    """Makes ``dst`` mirror ``src``'s finished files as hard links (copies across filesystems),
    leaving out the subtrees at ``exclude`` (paths relative to ``src``)."""
    skipped = {os.path.normpath(e) for e in exclude}
    wanted: dict[str, str] = {}
    for folder, dirs, files in os.walk(src):
        rel_dir = os.path.relpath(folder, src)
        dirs[:] = [
            d
            for d in dirs
            if not d.startswith(UNFINISHED) and os.path.normpath(os.path.join(rel_dir, d)) not in skipped
        ]
        for name in files:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if not name.startswith(UNFINISHED) and name != MARKER and rel not in skipped:
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
