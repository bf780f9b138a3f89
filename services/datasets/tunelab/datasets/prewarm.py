"""Prewarm: hash a directory's files and upload the blobs the store lacks, in parallel.

Unchanged files are not read again (the hash cache), blobs already stored are not uploaded again
(the blob index, then the store itself), so an interrupted prewarm resumes where it stopped and a
re-prewarm of unchanged content costs a directory walk.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tunelab.common.errors import FailedPrecondition
from tunelab.common.storage.blobs import BlobStore
from tunelab.common.storage.hashing import HashCache
from tunelab.common.storage.manifest import FileEntry, Manifest, file_mode, walk_files

log = logging.getLogger(__name__)
# Hashing is CPU-bound (hashlib releases the GIL): a few threads saturate the cores.
HASH_WORKERS = min(8, (os.cpu_count() or 2) * 2)


@dataclass
class PrewarmProgress:
    """Shaped like Alluxio's `job load` report; updated in place and published by the caller."""

    phase: str = "hashing"
    files_total: int = 0
    files_done: int = 0
    files_failed: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_uploaded: int = 0
    current_file: str = ""
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.bytes_done / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float:
        rate = self.rate()
        return (self.bytes_total - self.bytes_done) / rate if rate > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "phase": self.phase,
            "files_total": self.files_total,
            "files_done": self.files_done,
            "files_failed": self.files_failed,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "bytes_uploaded": self.bytes_uploaded,
            "bytes_per_second": round(self.rate(), 1),
            "eta_seconds": round(self.eta(), 1),
            "current_file": self.current_file,
        }


class BlobIndex(Protocol):
    """What the prewarmer asks of the service's state: which blobs are known to be stored."""

    def known_blobs(self, hashes: list[str]) -> set[str]: ...

    def add_blobs(self, blobs: dict[str, int]) -> None: ...


class Prewarmer:
    def __init__(
        self,
        blobs: BlobStore,
        index: BlobIndex,
        hash_cache: HashCache,
        *,
        workers: int = 16,
        publish_every_s: float = 0.5,
    ) -> None:
        self.blobs = blobs
        self.index = index
        self.hash_cache = hash_cache
        self.workers = workers
        self.publish_every_s = publish_every_s

    def manifest_of(self, root: Path, progress: PrewarmProgress, publish: Callable[[], None]) -> Manifest:
        """Hashes every file under ``root`` (cached hashes for unchanged files) into a manifest."""
        found = walk_files(root)
        progress.phase = "hashing"
        progress.files_total = len(found)
        progress.bytes_total = sum(st.st_size for _, _, st in found)
        ticker = _Ticker(self.publish_every_s, publish)

        prefix = len(str(root)) + 1

        def on_hashed(path: str | Path) -> None:
            progress.current_file = str(path)[prefix:]
            ticker.maybe()

        items = [(path, st) for _, path, st in found]
        digests = self.hash_cache.hash_files(items, workers=HASH_WORKERS, on_hashed=on_hashed)
        publish()
        return Manifest(
            [
                FileEntry(rel, st.st_size, sha, file_mode(st))
                for (rel, _, st), sha in zip(found, digests, strict=True)
            ]
        )

    def upload(
        self, root: Path, manifest: Manifest, progress: PrewarmProgress, publish: Callable[[], None]
    ) -> None:
        """Uploads the manifest's blobs the store lacks; counts every file towards progress."""
        progress.phase = "uploading"
        unique = manifest.unique_blobs()
        known = self.index.known_blobs(list(unique))
        unknown = [sha for sha in unique if sha not in known]
        missing = self.blobs.missing(unknown) if unknown else set()
        self.index.add_blobs({sha: unique[sha] for sha in unknown if sha not in missing})
        first_path: dict[str, FileEntry] = {}
        for f in manifest.files:
            first_path.setdefault(f.sha256, f)
        lock = threading.Lock()
        ticker = _Ticker(self.publish_every_s, publish)
        started_sizes = {f.path: f.size for f in manifest.files}

        def count(entry: FileEntry, uploaded: bool) -> None:
            with lock:
                progress.files_done += 1
                progress.bytes_done += entry.size
                if uploaded:
                    progress.bytes_uploaded += entry.size
                progress.current_file = entry.path
            ticker.maybe()

        def upload_one(sha: str) -> None:
            entry = first_path[sha]
            path = root / entry.path
            before = path.stat()
            if before.st_size != started_sizes[entry.path]:
                raise FailedPrecondition(f"{entry.path} changed while it was being prewarmed; sync again")
            self.blobs.put_file(sha, path)
            after = path.stat()
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                self.blobs.delete(sha)
                raise FailedPrecondition(f"{entry.path} changed while it was being uploaded; sync again")
            self.index.add_blobs({sha: entry.size})
            count(entry, True)

        progress.files_done = 0
        progress.bytes_done = 0
        uploaded_paths = {first_path[sha].path for sha in missing}
        for f in manifest.files:
            if f.path not in uploaded_paths:
                count(f, False)
        # Big blobs first: they take longest, and small ones then fill the gaps at the end.
        order = sorted(missing, key=lambda sha: -unique[sha])
        with ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(upload_one, sha) for sha in order]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                progress.files_failed += 1
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        publish()


class _Ticker:
    """Calls ``publish`` at most every ``every_s`` seconds, from whichever thread gets there."""

    def __init__(self, every_s: float, publish: Callable[[], None]) -> None:
        self.every_s = every_s
        self.publish = publish
        self._next = time.monotonic() + every_s
        self._lock = threading.Lock()

    def maybe(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        with self._lock:
            if now < self._next:
                return
            self._next = now + self.every_s
        self.publish()
