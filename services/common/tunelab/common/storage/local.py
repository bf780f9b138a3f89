"""A local directory with the same key layout as the S3 bucket."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from tunelab.common.errors import InvalidArgument, NotFound
from tunelab.common.storage.objectstore import ObjectInfo, StoreFull

# Objects being written: a temporary name beside the final one, renamed once complete.
TMP_PREFIX = ".tmp-"
# How a full disk names this store to clients: the setting that says where it is, not the path.
LABEL = "a local directory, TUNELAB_STORE_URL"


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise InvalidArgument(f"object key {key!r} escapes the store")
        return self.root / key

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def _atomic_write(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        target = self._path(key)
        tmp = ""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TMP_PREFIX)
            with os.fdopen(fd, "wb") as out:
                write(out)
            os.replace(tmp, target)
        except BaseException as exc:
            if tmp:
                Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(LABEL, key) from exc
            raise

    def put_file(self, key: str, path: Path) -> None:
        with path.open("rb") as src:
            self._atomic_write(key, lambda out: shutil.copyfileobj(src, out, 1024 * 1024))

    def put_stream(self, key: str, stream: BinaryIO, size: int) -> None:
        self._atomic_write(key, lambda out: shutil.copyfileobj(stream, out, 1024 * 1024))

    def put_chunks(self, key: str, chunks: Iterable[bytes], size: int, check: Callable[[], None]) -> None:
        def write(out: BinaryIO) -> None:
            for chunk in chunks:
                out.write(chunk)
            check()

        self._atomic_write(key, write)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda out: out.write(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"object {key} is not in {self.describe()}") from None

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        try:
            src = self._path(key).open("rb")
        except FileNotFoundError:
            raise NotFound(f"object {key} is not in {self.describe()}") from None
        with src:
            while chunk := src.read(chunk_size):
                yield chunk

    def download(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError:
            raise NotFound(f"object {key} is not in {self.describe()}") from None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix else self.root
        start = base if base.is_dir() else base.parent
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    continue
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    st = full.stat()
                    yield ObjectInfo(key, st.st_size, st.st_mtime)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def sweep_partial(self, before: float, dry_run: bool = False) -> tuple[int, int]:
        count = size = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if not name.startswith(TMP_PREFIX):
                    continue
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except FileNotFoundError:  # its write finished or failed meanwhile
                    continue
                if st.st_mtime >= before:
                    continue
                if not dry_run:
                    path.unlink(missing_ok=True)
                count += 1
                size += st.st_size
        return count, size
