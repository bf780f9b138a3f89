"""Content-addressed blobs in the object store, and a local blob cache for materializing.

Layout (DESIGN.md): ``blobs/sha256/<first 2 hex>/<hash>``. A blob's key is its content hash, so a
file shared by many versions (or environments) is stored once. ETags are never trusted as hashes:
blobs are hashed by us before upload and after download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Protocol

from tunelab.common.errors import DataLoss, InvalidArgument, NotFound
from tunelab.common.storage.hashing import CHUNK
from tunelab.common.storage.manifest import check_sha256
from tunelab.common.storage.objectstore import ObjectStore

log = logging.getLogger(__name__)

BLOB_PREFIX = "blobs/sha256/"


def blob_key(sha256: str) -> str:
    return f"{BLOB_PREFIX}{sha256[:2]}/{sha256}"


class BlobStore:
    """Blobs in an object store: upload-if-missing, verified reads, listing for GC."""

    def __init__(self, store: ObjectStore, workers: int = 16) -> None:
        self.store = store
        self.workers = workers

    def has(self, sha256: str) -> bool:
        return self.store.stat(blob_key(sha256)) is not None

    def missing(self, blobs: Iterable[str]) -> set[str]:
        """The subset of ``blobs`` the store lacks (parallel HEADs, or one listing for many)."""
        wanted = set(blobs)
        if len(wanted) > 512:
            present = {info.key.rsplit("/", 1)[-1] for info in self.store.list(BLOB_PREFIX)}
            return wanted - present
        with ThreadPoolExecutor(self.workers) as pool:
            flags = dict(zip(wanted, pool.map(self.has, wanted), strict=True))
        return {sha for sha, present in flags.items() if not present}

    def put_file(self, sha256: str, path: Path) -> None:
        self.store.put_file(blob_key(sha256), path)

    def put_verified_stream(self, sha256: str, size: int, chunks: Iterator[bytes]) -> None:
        """Stores a blob sent in chunks, streaming it to the store as it arrives. The object becomes
        visible only when its size and sha256 match the claim; otherwise nothing is stored."""
        check_sha256(sha256, "blob")
        h = hashlib.sha256()
        received = 0

        def counted() -> Iterator[bytes]:
            nonlocal received
            for chunk in chunks:
                received += len(chunk)
                if received > size:
                    raise InvalidArgument(f"blob {sha256}: more than the declared {size} bytes arrived")
                h.update(chunk)
                yield chunk

        def check() -> None:
            if received != size or h.hexdigest() != sha256:
                raise InvalidArgument(
                    f"blob {sha256}: received {received} bytes hashing to {h.hexdigest()}, "
                    f"expected {size} bytes; did the file change while it was being sent?"
                )

        self.store.put_chunks(blob_key(sha256), counted(), size, check)

    def iter_chunks(self, sha256: str) -> Iterator[bytes]:
        return self.store.iter_chunks(blob_key(sha256), CHUNK)

    def fetch(self, sha256: str, size: int, dest: BinaryIO) -> None:
        """Writes the blob into ``dest``; raises DataLoss when its bytes do not hash to ``sha256``."""
        write_verified(sha256, size, self.iter_chunks(sha256), dest)

    def list(self) -> Iterator[tuple[str, int, float]]:
        for info in self.store.list(BLOB_PREFIX):
            yield info.key.rsplit("/", 1)[-1], info.size, info.modified

    def delete(self, sha256: str) -> None:
        self.store.delete(blob_key(sha256))


def write_verified(sha256: str, size: int, chunks: Iterable[bytes], dest: BinaryIO) -> None:
    h = hashlib.sha256()
    written = 0
    for chunk in chunks:
        h.update(chunk)
        dest.write(chunk)
        written += len(chunk)
    if written != size or h.hexdigest() != sha256:
        raise DataLoss(
            f"blob {sha256} is corrupt in the store: got {written} bytes hashing to {h.hexdigest()}"
        )


class BlobSource(Protocol):
    """Where a materializer fetches blobs it has not cached: the store itself or a service."""

    def fetch(self, sha256: str, size: int, dest: BinaryIO) -> None: ...


class BlobCache:
    """A local directory of verified blobs keyed by sha256, shared by every pull on the machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def ensure(self, sha256: str, size: int, source: BlobSource, retries: int = 1) -> tuple[Path, bool]:
        """Returns (cached path, whether it was fetched). Fetches verified, writes atomically."""
        target = self.path(sha256)
        try:
            if target.stat().st_size == size:
                return target, False
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(retries + 1):
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".partial-")
            try:
                with os.fdopen(fd, "wb") as out:
                    source.fetch(sha256, size, out)
                os.chmod(tmp, 0o444)  # cache entries are shared (hard links): never edit in place
                os.replace(tmp, target)
                return target, True
            except DataLoss:
                Path(tmp).unlink(missing_ok=True)
                if attempt == retries:
                    raise
                log.warning("blob failed verification, fetching again", extra={"sha256": sha256})
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        raise AssertionError("unreachable")

    def evict(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)


class StoreSource:
    """Fetches blobs straight from the object store (services, or clients with store access)."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs

    def fetch(self, sha256: str, size: int, dest: BinaryIO) -> None:
        try:
            self._blobs.fetch(sha256, size, dest)
        except NotFound:
            raise DataLoss(f"blob {sha256} is missing from the store") from None


Progress = Callable[[str, int, bool], None]


def copy_into(src: Path, dest: Path, mode: int) -> None:
    shutil.copyfile(src, dest)
    os.chmod(dest, mode)
