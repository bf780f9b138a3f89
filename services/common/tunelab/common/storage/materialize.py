"""Materialize a manifest into a directory: verified blobs through the local cache, then an atomic
swap, so a reader never sees a half-written directory.

A marker file records which manifest a directory holds, so that materializing the same manifest
again costs nothing. It lies inside the directory (``MARKER``) unless the caller keeps it elsewhere
(``marker=``): the job agent keeps its markers beside the tree a job sees, not in it."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tunelab.common.errors import DataLoss
from tunelab.common.storage.atomicdir import replacing
from tunelab.common.storage.blobs import BlobCache, BlobSource
from tunelab.common.storage.manifest import Manifest

MARKER = ".tunelab-manifest.json"


@dataclass
class MaterializeResult:
    path: Path
    files: int
    bytes: int
    bytes_fetched: int
    seconds: float
    unchanged: bool = False


def read_marker(target: Path, marker: Path | None = None) -> str | None:
    """The manifest digest a directory was materialized from, if it was (``marker``: where its
    marker file is kept, when not inside it)."""
    try:
        return str(json.loads((marker or target / MARKER).read_text())["digest"])
    except (OSError, ValueError, KeyError):
        return None


def write_marker(marker: Path, digest: str, label: str) -> None:
    """Writes a marker file in one step (a reader sees the old one or the new one)."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps({"digest": digest, "label": label}))
    tmp.replace(marker)


def materialize(
    manifest: Manifest,
    target: Path,
    cache: BlobCache,
    source: BlobSource,
    *,
    workers: int = 8,
    progress: Callable[[int, int], None] | None = None,
    label: str = "",
    link: bool = True,
    marker: Path | None = None,
) -> MaterializeResult:
    """Makes ``target`` hold exactly ``manifest``'s files.

    Blobs come from ``cache`` or, when missing there, from ``source`` (verified by sha256). The
    files are assembled in a sibling temporary directory that replaces ``target`` only when
    complete. A target already holding this manifest is left alone.

    With ``link`` (the default), files are read-only hard links to the verified cache entries when
    the cache is on the same filesystem (a second pull of the same content then costs only
    metadata); executable files and ``link=False`` get writable copies.

    ``marker`` keeps the marker file at that path instead of inside ``target``.
    """
    started = time.perf_counter()
    digest = manifest.digest()
    if target.is_dir() and read_marker(target, marker) == digest:
        return MaterializeResult(target, len(manifest.files), manifest.size, 0, 0.0, unchanged=True)
    fetched = 0
    done = 0
    lock = threading.Lock()

    first_path: dict[str, str] = {}
    for entry in manifest.files:
        first_path.setdefault(entry.sha256, entry.path)

    def ensure(sha256: str, size: int) -> Path:
        nonlocal fetched
        try:
            cached, was_fetched = cache.ensure(sha256, size, source)
        except DataLoss as exc:
            raise DataLoss(f"{label}{first_path[sha256]}: {exc.message}") from None
        if was_fetched:
            with lock:
                fetched += size
        return cached

    def place(index: int) -> None:
        nonlocal done
        entry = manifest.files[index]
        dest = staging / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not (can_link and entry.mode & 0o111 == 0 and _try_link(cached[entry.sha256], dest)):
            shutil.copyfile(cached[entry.sha256], dest)
            os.chmod(dest, entry.mode)
        with lock:
            done += entry.size
            if progress:
                progress(done, manifest.size)

    with replacing(target, lambda t: read_marker(t, marker) is not None) as staging:
        can_link = link and os.stat(staging).st_dev == os.stat(cache.root).st_dev
        unique = manifest.unique_blobs()
        with ThreadPoolExecutor(workers) as pool:
            # Each distinct blob once (two files with equal content must not fetch it twice).
            cached = dict(zip(unique, pool.map(ensure, unique, unique.values()), strict=True))
            list(pool.map(place, range(len(manifest.files))))
        if marker is None:
            (staging / MARKER).write_text(json.dumps({"digest": digest, "label": label}))
        else:  # it no longer describes target: gone before the swap, rewritten after it
            marker.unlink(missing_ok=True)
    if marker is not None:
        write_marker(marker, digest, label)
    return MaterializeResult(
        target, len(manifest.files), manifest.size, fetched, time.perf_counter() - started
    )


def _try_link(src: Path, dest: Path) -> bool:
    try:
        os.link(src, dest)
        return True
    except OSError:  # e.g. a filesystem without hard links, or the link-count limit
        return False
