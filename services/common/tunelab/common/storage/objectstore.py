"""The object-store interface and the factory that picks a backend from a URL."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse

from tunelab.common.errors import InvalidArgument, ResourceExhausted
from tunelab.common.settings import StoreSettings


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float


class StoreFull(ResourceExhausted):
    """The store had no room left for an object (a full disk or quota); nothing of it was kept.

    ``store`` says which store in words fit for a client (never a path on the server's disk).
    """

    def __init__(self, store: str, key: str) -> None:
        super().__init__(
            f"no space left on the object store ({store}) while writing {key}: free space and retry"
        )
        self.store = store
        self.key = key


class ObjectStore(Protocol):
    """A flat key → bytes store. Writes are atomic: a reader sees the old object or the new one."""

    def describe(self) -> str: ...

    def stat(self, key: str) -> ObjectInfo | None: ...

    def put_file(self, key: str, path: Path) -> None: ...

    def put_stream(self, key: str, stream: BinaryIO, size: int) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def put_chunks(self, key: str, chunks: Iterable[bytes], size: int, check: Callable[[], None]) -> None:
        """Writes ``chunks`` (``size`` bytes) as they come; calls ``check`` after the last one and
        before the object becomes visible. If ``check`` or anything else raises, nothing is stored."""
        ...

    def get_bytes(self, key: str) -> bytes: ...

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]: ...

    def download(self, key: str, path: Path) -> None: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def sweep_partial(self, before: float, dry_run: bool = False) -> tuple[int, int]:
        """Removes what interrupted writes left behind (a directory store's temporary files, S3's
        incomplete multipart uploads) untouched since ``before`` (a Unix time); returns (how many,
        bytes). A write in progress touches its temporary object with every chunk or part."""
        ...


def open_store(settings: StoreSettings) -> ObjectStore:
    """Builds the backend named by ``settings.store_url`` (``file://…`` or ``s3://bucket``)."""
    url = settings.resolved_store_url()
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from tunelab.common.storage.local import LocalStore

        return LocalStore(Path(parsed.path))
    if parsed.scheme == "s3":
        from tunelab.common.storage.s3 import S3Store

        if not parsed.netloc:
            raise InvalidArgument("TUNELAB_STORE_URL: s3:// needs a bucket, e.g. s3://tunelab")
        return S3Store.from_settings(settings, bucket=parsed.netloc, prefix=parsed.path.strip("/"))
    raise InvalidArgument(
        f"TUNELAB_STORE_URL={url!r}: unknown scheme {parsed.scheme!r}; use file:///dir or s3://bucket"
    )
