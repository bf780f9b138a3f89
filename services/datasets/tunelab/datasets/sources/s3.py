"""S3 sources: every object under a bucket and prefix, downloaded in parallel with the minio SDK.

A prefix names a folder (``data/`` or ``data``: the objects below it keep their path relative to
it) or, when nothing lies below it, one object (kept under its own name). Directory markers (keys
ending in '/') are skipped; a key that would land outside the destination, or collide with another,
refuses the whole source. The SDK neither retries nor follows redirects here: transient failures are
retried by :func:`with_retries`, and the endpoint must pass the SSRF guard.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from tunelab.common import netguard
from tunelab.common.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unavailable
from tunelab.datasets.sources.spec import FetchPolicy, S3Spec
from tunelab.datasets.sources.util import Progress, Throttle, UnsafePath, safe_relpath, with_retries

log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK = 1024 * 1024
WORKERS = 16
DEFAULT_ENDPOINT = "s3.amazonaws.com"
REACH_HINT = "check the endpoint and that it is reachable from the datasets service"
TRANSIENT = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, ServerError)
TRANSIENT_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling"}
)
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
    }
)
REGION_CODES = frozenset(
    {"AuthorizationHeaderMalformed", "PermanentRedirect", "IllegalLocationConstraintException"}
)


class _Transient(Exception):
    """A failure worth another attempt."""


class _Stopped(Exception):
    """Another download failed; this one gives up."""


@dataclass(frozen=True)
class _Object:
    key: str
    path: str
    size: int


def check_endpoint(spec: S3Spec, policy: FetchPolicy) -> None:
    """Refuses an endpoint that is malformed or that the policy forbids (a host that does not
    resolve raises Unavailable)."""
    endpoint, host, port, _ = _endpoint(spec)
    netguard.check_host(host, port, policy, what=f"S3 endpoint {endpoint}")


def fetch_s3(spec: S3Spec, dest: Path, policy: FetchPolicy, progress: Progress) -> dict[str, str]:
    """Downloads the objects under ``s3://bucket/prefix`` into ``dest``."""
    endpoint, host, port, secure = _endpoint(spec)
    with_retries(
        lambda: netguard.check_host(host, port, policy, what=f"S3 endpoint {endpoint}"),
        policy,
        transient=(Unavailable,),
        what=f"S3 endpoint {endpoint}",
        hint=REACH_HINT,
    )
    prefix = spec.prefix.lstrip("/")
    where = f"s3://{spec.bucket}/{prefix} at {endpoint}"
    client = _client(spec, endpoint, secure, policy)
    call = _Caller(policy, where, spec.bucket, endpoint)
    objects = _plan(call, client, spec.bucket, prefix, where)
    total = sum(o.size for o in objects)
    if total > policy.max_download_bytes:
        raise ResourceExhausted(
            f"{where} holds {total} bytes, more than {policy.max_download_bytes} "
            "(TUNELAB_MAX_DOWNLOAD_BYTES); narrow the prefix or raise the limit"
        )
    _download_all(call, client, spec.bucket, objects, dest, total, progress)
    log.info("downloaded S3 source", extra={"source": where, "objects": len(objects), "bytes": total})
    return {
        "bucket": spec.bucket,
        "prefix": prefix,
        "endpoint": endpoint,
        "objects": str(len(objects)),
        "bytes": str(total),
    }


def _endpoint(spec: S3Spec) -> tuple[str, str, int, bool]:
    """(host[:port], host, port, https?) of the endpoint, which may also be written as a URL."""
    raw = spec.endpoint.strip() or DEFAULT_ENDPOINT
    if "://" not in raw:
        raw = f"{'https' if spec.secure else 'http'}://{raw}"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        parts, port = urlsplit(""), None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise InvalidArgument(
            f"S3 endpoint {spec.endpoint!r} is not host:port or http(s)://host:port; fix it"
        )
    secure = parts.scheme == "https"
    return parts.netloc.rpartition("@")[2], parts.hostname, port or (443 if secure else 80), secure


def _client(spec: S3Spec, endpoint: str, secure: bool, policy: FetchPolicy) -> Minio:
    pool = urllib3.PoolManager(
        maxsize=WORKERS,
        timeout=urllib3.Timeout(connect=policy.connect_timeout_s, read=policy.read_timeout_s),
        retries=False,  # no SDK retries (ours are counted) and redirects come back unfollowed
    )
    try:
        return Minio(
            endpoint,
            access_key=spec.access_key or None,
            secret_key=spec.secret_key or None,
            secure=secure,
            region=spec.region or None,
            http_client=pool,
        )
    except ValueError as exc:
        raise InvalidArgument(f"S3 endpoint {endpoint!r} is not usable ({exc}); fix it") from None


class _Caller:
    """Runs SDK calls with retries and maps S3 errors to typed ones naming the source."""

    def __init__(self, policy: FetchPolicy, where: str, bucket: str, endpoint: str) -> None:
        self.policy = policy
        self.where = where
        self.bucket = bucket
        self.endpoint = endpoint

    def __call__(self, fn: Callable[[], T], key: str = "") -> T:
        def attempt() -> T:
            try:
                return fn()
            except S3Error as exc:
                raise self._error(exc, key) from None
            except ValueError as exc:  # the SDK checks bucket names and keys before sending
                raise InvalidArgument(f"{self.where}: {exc}; fix the bucket name or prefix") from None
            except InvalidResponseError as exc:
                raise InvalidArgument(
                    f"{self.endpoint} did not answer like an S3 server ({exc}); check the source's endpoint"
                ) from None

        return with_retries(
            attempt,
            self.policy,
            transient=(_Transient, *TRANSIENT),
            what=(key and f"object {key} of {self.where}") or self.where,
            hint=REACH_HINT,
        )

    def _error(self, exc: S3Error, key: str) -> Exception:
        code = exc.code or ""
        if code == "NoSuchBucket":
            return NotFound(
                f"bucket {self.bucket!r} does not exist at {self.endpoint}; check the bucket name"
            )
        if code in ("NoSuchKey", "NoSuchObject"):
            return NotFound(f"object {key} vanished from {self.where} while it was fetched; try again")
        if code in DENIED_CODES:
            return PermissionDenied(
                f"{self.where} refused access ({code}); check the source's access key and secret key"
            )
        if code in REGION_CODES:
            return InvalidArgument(f"{self.where}: {code}: {exc.message}; set the source's region")
        if code in TRANSIENT_CODES:
            return _Transient(f"{code}: {exc.message}")
        return InvalidArgument(f"S3 error on {self.where}: {code}: {exc.message}")


def _plan(call: _Caller, client: Minio, bucket: str, prefix: str, where: str) -> list[_Object]:
    """The objects to fetch and where each goes; NotFound when there are none."""
    folder = prefix if not prefix or prefix.endswith("/") else f"{prefix}/"
    listed = call(lambda: _list(client, bucket, folder))
    if not listed and folder != prefix:
        single = call(lambda: _stat(client, bucket, prefix), prefix)
        if single is not None:
            return [_Object(prefix, prefix.rpartition("/")[2], single)]
    objects: list[_Object] = []
    for key, size in listed:
        if key.endswith("/"):
            continue  # a "directory marker" some tools create
        try:
            path = safe_relpath(key[len(folder) :])
        except UnsafePath as exc:
            raise InvalidArgument(
                f"object key {key!r} under {where} is unsafe as a file name: {exc}; rename or exclude it"
            ) from None
        if path:
            objects.append(_Object(key, path, size))
    if not objects:
        raise NotFound(f"no objects under s3://{bucket}/{prefix}; check the bucket, prefix and endpoint")
    _check_layout(objects, where)
    return objects


def _list(client: Minio, bucket: str, folder: str) -> list[tuple[str, int]]:
    found = client.list_objects(bucket_name=bucket, prefix=folder or None, recursive=True)
    return [(obj.object_name or "", obj.size or 0) for obj in found]


def _stat(client: Minio, bucket: str, key: str) -> int | None:
    try:
        return client.stat_object(bucket_name=bucket, object_name=key).size or 0
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
            return None
        raise


def _check_layout(objects: list[_Object], where: str) -> None:
    """Refuses keys that map to the same file, or to a file where another needs a folder."""
    files: dict[str, str] = {}
    for obj in objects:
        if obj.path in files:
            raise InvalidArgument(
                f"objects {files[obj.path]!r} and {obj.key!r} under {where} map to the same file"
            )
        files[obj.path] = obj.key
    for obj in objects:
        parts = obj.path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in files:
                raise InvalidArgument(
                    f"object {files[parent]!r} under {where} is a file where {obj.key!r} needs a folder; "
                    "tunelab cannot lay out both"
                )


def _download_all(
    call: _Caller,
    client: Minio,
    bucket: str,
    objects: list[_Object],
    dest: Path,
    total: int,
    progress: Progress,
) -> None:
    meter = _Meter(Throttle(progress), total, len(objects))
    stop = threading.Event()
    for obj in objects:
        (dest / obj.path).parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(objects)), thread_name_prefix="s3-fetch") as pool:
        futures = [pool.submit(_download, call, client, bucket, obj, dest, meter, stop) for obj in objects]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            stop.set()
            for future in futures:
                future.cancel()
            error = failed.exception()
            assert error is not None
            raise error
    meter.finish()


def _download(
    call: _Caller, client: Minio, bucket: str, obj: _Object, dest: Path, meter: _Meter, stop: threading.Event
) -> None:
    def once() -> None:
        got = 0
        response = client.get_object(bucket_name=bucket, object_name=obj.key)
        try:
            with (dest / obj.path).open("wb") as out:
                for chunk in response.stream(CHUNK):
                    if stop.is_set():
                        raise _Stopped()
                    out.write(chunk)
                    got += len(chunk)
                    meter.add(len(chunk))
        except BaseException:
            meter.add(-got)
            raise
        finally:
            response.close()
            response.release_conn()
        if got != obj.size:
            meter.add(-got)
            raise _Transient(
                f"object {obj.key} changed size while it was fetched ({got} of {obj.size} bytes)"
            )

    call(once, obj.key)
    meter.file_done()


class _Meter:
    """Thread-safe progress over every object."""

    def __init__(self, progress: Throttle, total: int, count: int) -> None:
        self.progress = progress
        self.total = total
        self.count = count
        self.done = 0
        self.files = 0
        self.lock = threading.Lock()

    def add(self, size: int) -> None:
        with self.lock:
            self.done += size
            self.progress(f"downloading {self.files} of {self.count} objects", self.done, self.total)

    def file_done(self) -> None:
        with self.lock:
            self.files += 1

    def finish(self) -> None:
        self.progress(f"downloaded {self.count} objects", self.done, self.total, force=True)
