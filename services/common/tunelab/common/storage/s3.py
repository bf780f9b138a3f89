"""S3 / MinIO backend through the ``minio`` SDK.

Large objects go up as multipart uploads with an explicit part size (the SDK's default of 5 MiB
parts is slow) and several parts in flight; the SDK aborts a failed multipart upload. Transient
failures are retried a bounded number of times, then surface as :class:`Unavailable`.
"""

from __future__ import annotations

import builtins
import io
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar

import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import S3Error

from tunelab.common.errors import NotFound, PermissionDenied, Unavailable
from tunelab.common.settings import StoreSettings
from tunelab.common.storage.objectstore import ObjectInfo

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
# Part size of streamed multipart uploads: parts are held in memory while they are sent.
STREAM_PART_SIZE = 16 * 1024 * 1024


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Regroups a stream of chunks into pieces of exactly ``size`` bytes (the last may be shorter)."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


class S3Store:
    def __init__(
        self,
        client: Minio,
        bucket: str,
        *,
        prefix: str = "",
        part_size: int = 64 * 1024 * 1024,
        parallel_parts: int = 4,
        attempts: int = 4,
        endpoint: str = "",
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.part_size = part_size
        self.parallel_parts = parallel_parts
        self.attempts = attempts
        self.endpoint = endpoint

    @classmethod
    def from_settings(cls, settings: StoreSettings, *, bucket: str, prefix: str = "") -> S3Store:
        endpoint = settings.s3_endpoint or "s3.amazonaws.com"
        pool = urllib3.PoolManager(
            maxsize=settings.transfer_workers * 2,
            # urllib3 applies the connect timeout while a request body is being sent too, so it
            # must allow for a busy server taking in a large part.
            timeout=urllib3.Timeout(connect=60.0, read=300.0),
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
        )
        client = Minio(
            endpoint,
            access_key=settings.s3_access_key or None,
            secret_key=settings.s3_secret_key.get_secret_value() or None,
            secure=settings.s3_secure,
            region=settings.s3_region or None,
            http_client=pool,
        )
        return cls(client, bucket, prefix=prefix, part_size=settings.s3_part_size, endpoint=endpoint)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint or 'the S3 endpoint'}"

    def ensure_bucket(self) -> None:
        """Creates the bucket when it does not exist (MinIO dev setups, tests)."""
        if not self._call(lambda: self.client.bucket_exists(bucket_name=self.bucket)):
            self._call(lambda: self.client.make_bucket(bucket_name=self.bucket))

    def _call(self, fn: Callable[[], T], key: str = "", attempts: int | None = None) -> T:
        delay = 0.2
        attempts = attempts or self.attempts
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    raise NotFound(f"object {key} is not in {self.describe()}") from None
                if exc.code == "NoSuchBucket":
                    raise NotFound(
                        f"bucket {self.bucket!r} does not exist at {self.endpoint}: create it "
                        "(compose's bucket init does) or point TUNELAB_STORE_URL at another"
                    ) from None
                if exc.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                    raise PermissionDenied(
                        f"the S3 server refused {key or 'the request'} ({exc.code}): check "
                        "TUNELAB_S3_ACCESS_KEY / TUNELAB_S3_SECRET_KEY"
                    ) from None
                if attempt == attempts or exc.code not in (
                    "SlowDown",
                    "InternalError",
                    "RequestTimeout",
                ):
                    raise Unavailable(f"S3 error on {key or self.bucket}: {exc.code}: {exc.message}") from exc
            except TRANSIENT as exc:
                if attempt == attempts:
                    raise Unavailable(
                        f"cannot reach the object store {self.describe()} after {attempt} attempts: {exc}"
                    ) from exc
            log.warning("object store call failed, retrying", extra={"key": key, "attempt": attempt})
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _key(self, key: str) -> str:
        return self.prefix + key

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._call(
                lambda: self.client.stat_object(bucket_name=self.bucket, object_name=self._key(key)), key
            )
        except NotFound:
            return None
        modified = st.last_modified.timestamp() if st.last_modified else 0.0
        return ObjectInfo(key, st.size or 0, modified)

    def put_file(self, key: str, path: Path) -> None:
        size = path.stat().st_size

        def put() -> None:
            with path.open("rb") as src:
                self._put(key, src, size)

        self._call(put, key)

    def put_stream(self, key: str, stream: BinaryIO, size: int) -> None:
        # A stream cannot be rewound for a retry, so it gets one attempt.
        self._call(lambda: self._put(key, stream, size), key, attempts=1)

    def put_chunks(self, key: str, chunks: Iterable[bytes], size: int, check: Callable[[], None]) -> None:
        """Small objects are collected in memory and sent in one PUT; larger ones go up as a
        multipart upload whose parts are sent while the next ones arrive, and which is completed
        only after ``check`` passes (aborted otherwise), so a bad object is never visible."""
        if size <= STREAM_PART_SIZE:
            data = b"".join(chunks)
            check()
            self.put_bytes(key, data)
            return
        name = self._key(key)
        upload_id = self._call(lambda: self.client._create_multipart_upload(self.bucket, name, {}), key)
        parts: list[Future[Part]] = []
        try:
            with ThreadPoolExecutor(self.parallel_parts, thread_name_prefix="s3-part") as pool:
                window = threading.BoundedSemaphore(self.parallel_parts)
                for number, data in enumerate(_rechunk(chunks, STREAM_PART_SIZE), 1):
                    window.acquire()
                    parts.append(pool.submit(self._upload_part, key, name, upload_id, number, data, window))
                check()
                done = [p.result() for p in parts]
            self._call(
                lambda: self.client._complete_multipart_upload(self.bucket, name, upload_id, done), key
            )
        except BaseException:
            for p in parts:
                p.cancel()
            try:
                self.client._abort_multipart_upload(self.bucket, name, upload_id)
            except Exception:  # noqa: BLE001 - the original error matters more
                log.warning("could not abort multipart upload", extra={"key": key, "upload_id": upload_id})
            raise

    def _upload_part(
        self,
        key: str,
        name: str,
        upload_id: str,
        number: int,
        data: bytes,
        window: threading.BoundedSemaphore,
    ) -> Part:
        try:
            etag = self._call(
                lambda: self.client._upload_part(self.bucket, name, data, None, upload_id, number), key
            )
            return Part(number, etag)
        finally:
            window.release()

    def _put(self, key: str, stream: BinaryIO, size: int) -> None:
        self.client.put_object(
            bucket_name=self.bucket,
            object_name=self._key(key),
            data=stream,
            length=size,
            part_size=self.part_size if size > self.part_size else 0,
            num_parallel_uploads=self.parallel_parts,
        )

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(lambda: self._put(key, io.BytesIO(data), len(data)), key)

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            resp = self.client.get_object(bucket_name=self.bucket, object_name=self._key(key))
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call(get, key)

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        resp = self._call(
            lambda: self.client.get_object(bucket_name=self.bucket, object_name=self._key(key)), key
        )
        try:
            yield from resp.stream(chunk_size)
        finally:
            resp.close()
            resp.release_conn()

    def download(self, key: str, path: Path) -> None:
        def get() -> None:
            resp = self.client.get_object(bucket_name=self.bucket, object_name=self._key(key))
            try:
                with path.open("wb") as out:
                    for chunk in resp.stream(1024 * 1024):
                        out.write(chunk)
            finally:
                resp.close()
                resp.release_conn()

        self._call(get, key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        objects = self.client.list_objects(bucket_name=self.bucket, prefix=self._key(prefix), recursive=True)
        try:
            for obj in objects:
                modified = obj.last_modified.timestamp() if obj.last_modified else 0.0
                yield ObjectInfo(obj.object_name[len(self.prefix) :], obj.size or 0, modified)
        except TRANSIENT as exc:
            raise Unavailable(f"cannot list {self.describe()}: {exc}") from exc

    def delete(self, key: str) -> None:
        self._call(
            lambda: self.client.remove_object(bucket_name=self.bucket, object_name=self._key(key)), key
        )

    def sweep_partial(self, before: float, dry_run: bool = False) -> tuple[int, int]:
        """Aborts the incomplete multipart uploads under this store's prefix whose newest part (or
        start, without parts) is older than ``before``: what a killed writer left behind."""
        count = size = 0
        for name, upload_id, started in self._multipart_uploads():
            parts = self._parts(name, upload_id)
            if max([started, *(when for when, _ in parts)]) >= before:
                continue
            if not dry_run:
                self._call(partial(self.client._abort_multipart_upload, self.bucket, name, upload_id), name)
            count += 1
            size += sum(part_size for _, part_size in parts)
        return count, size

    def _multipart_uploads(self) -> Iterator[tuple[str, str, float]]:
        """(object name, upload id, start time) of each incomplete multipart upload under the prefix."""
        key_marker: str | None = None
        upload_marker: str | None = None
        while True:
            page = self._call(
                partial(
                    self.client._list_multipart_uploads,
                    self.bucket,
                    prefix=self.prefix or None,
                    key_marker=key_marker,
                    upload_id_marker=upload_marker,
                )
            )
            for upload in page.uploads:
                started = upload.initiated_time.timestamp() if upload.initiated_time else 0.0
                yield upload.object_name, upload.upload_id or "", started
            if not page.is_truncated or not page.uploads:
                return
            key_marker, upload_marker = page.uploads[-1].object_name, page.uploads[-1].upload_id

    def _parts(self, name: str, upload_id: str) -> builtins.list[tuple[float, int]]:
        """(modification time, size) of each part an incomplete upload holds so far."""
        parts: builtins.list[tuple[float, int]] = []
        marker: str | None = None
        while True:
            page = self._call(
                partial(self.client._list_parts, self.bucket, name, upload_id, part_number_marker=marker)
            )
            parts += [
                (p.last_modified.timestamp() if p.last_modified else 0.0, p.size or 0) for p in page.parts
            ]
            if not page.is_truncated or not page.parts:
                return parts
            marker = str(page.parts[-1].part_number)
