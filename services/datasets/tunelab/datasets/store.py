"""DatasetStore: the datasets service's domain object. The gRPC servicer is a thin layer over it."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tunelab.common.names import check_id, fold, parse_version, split_name
from tunelab.common.storage.blobs import BlobCache, BlobStore, StoreSource
from tunelab.common.storage.hashing import HashCache
from tunelab.common.storage.manifest import FileEntry, Manifest, check_sha256
from tunelab.common.storage.materialize import materialize
from tunelab.common.storage.objectstore import StoreFull
from tunelab.datasets.cleanup import fail_interrupted, interrupted_before, store_full, sweep_partial_writes
from tunelab.datasets.gc import collect_garbage
from tunelab.datasets.prewarm import Prewarmer, PrewarmProgress
from tunelab.datasets.registry import DatasetRecord, Registry, VersionRecord
from tunelab.datasets.sources.check import check_source
from tunelab.datasets.sources.spec import (
    FETCHED,
    DerivedSpec,
    FetchPolicy,
    SourceSpec,
    spec_from_dict,
    spec_to_dict,
)
from tunelab.datasets.syncing import SyncRunner, record_failure
from tunelab.datasets.transforms import TRANSFORMS

log = logging.getLogger(__name__)

MANIFEST = "datasets/{id}/versions/{n}/manifest.json"


def manifest_key(dataset_id: str, number: int) -> str:
    return MANIFEST.format(id=dataset_id, n=number)


def parse_version_name(name: str) -> tuple[str, int | None]:
    """``datasets/x/versions/3`` (or ``latest``), ``x@3``, ``x@latest`` or ``x`` → (id, number|None)."""
    return parse_version(name, "datasets", "dataset")


@dataclass
class UploadPlan:
    version: VersionRecord
    missing: list[str]


class DatasetStore:
    """Datasets, their versions and blobs.

    Backends come in through the constructor: the registry (state), the blob store, a directory for
    staging fetched sources, the fetch function and its policy.
    """

    def __init__(
        self,
        registry: Registry,
        blobs: BlobStore,
        work_dir: Path,
        *,
        policy: FetchPolicy,
        fetch: Any = None,
        sync_workers: int = 2,
        transfer_workers: int = 16,
        gc_grace_s: float = 3600.0,
        partial_write_grace_s: float = 600.0,
        replica: str = "",
        lease_s: float = 30.0,
    ) -> None:
        self.registry = registry
        self.blobs = blobs
        self.work_dir = work_dir
        self.policy = policy
        self.gc_grace_s = gc_grace_s
        self.partial_write_grace_s = partial_write_grace_s
        self.started = time.time()
        self.hash_cache = HashCache(work_dir / "hashes.sqlite")
        self.prewarmer = Prewarmer(blobs, registry, self.hash_cache, workers=transfer_workers)
        self.cache = BlobCache(work_dir / "blob-cache")
        self.syncs = SyncRunner(
            registry,
            work_dir,
            policy,
            self._prewarm,
            fetch=fetch,
            workers=sync_workers,
            replica=replica,
            lease_s=lease_s,
        )

    # -- datasets ---------------------------------------------------------------------------
    def create_dataset(
        self,
        dataset_id: str,
        source: SourceSpec,
        description: str = "",
        labels: dict[str, str] | None = None,
        display_name: str = "",
    ) -> tuple[DatasetRecord, VersionRecord | None]:
        """``dataset_id`` as written (``AdvertiseGen``): stored lower-case, its spelling kept as the
        display name unless ``display_name`` gives another spelling of it."""
        ident = check_id(dataset_id, "dataset_id")
        spelling = display_name or dataset_id
        if fold(spelling) != ident:
            raise InvalidArgument(
                f"dataset.display_name {display_name!r} must spell the name {ident!r} "
                "(the same letters, in any case)"
            )
        if isinstance(source, DerivedSpec):
            raise InvalidArgument("source: derived datasets are made with TransformDataset")
        if source.kind in FETCHED:
            check_source(source, self.policy)
        rec = DatasetRecord(
            ident, description, spec_to_dict(source), labels or {}, time.time(), display_name=spelling
        )
        try:
            self.registry.create_dataset(rec)
        except AlreadyExists:
            numbers = self.registry.drop_stillborn(ident)
            if numbers is None:
                raise
            log.info("replacing a dataset whose versions all failed", extra={"dataset": ident})
            self._forget(ident, numbers)
            self.registry.create_dataset(rec)
        version = self.sync(ident) if source.kind in FETCHED else None
        return self.registry.get_dataset(rec.id), version

    def get_dataset(self, dataset_id: str) -> DatasetRecord:
        return self.registry.get_dataset(check_id(dataset_id, "dataset"))

    def list_datasets(self, page_token: str, page_size: int) -> tuple[list[DatasetRecord], str]:
        size = _page_size(page_size)
        items = self.registry.list_datasets(page_token, size)
        return items, (items[-1].id if len(items) == size else "")

    def delete_dataset(self, dataset_id: str) -> None:
        dataset_id = check_id(dataset_id, "dataset")
        self._forget(dataset_id, self.registry.delete_dataset(dataset_id))

    def _forget(self, dataset_id: str, numbers: list[int]) -> None:
        """Removes what a deleted dataset's versions kept outside the state: manifests, staging."""
        for n in numbers:
            self.blobs.store.delete(manifest_key(dataset_id, n))
        shutil.rmtree(self.work_dir / "staging" / dataset_id, ignore_errors=True)

    # -- versions ---------------------------------------------------------------------------
    def sync(self, dataset_id: str) -> VersionRecord:
        """Starts fetching the dataset's source into a new version; returns it PENDING."""
        ds = self.get_dataset(dataset_id)
        spec = spec_from_dict(ds.source)
        if spec.kind not in FETCHED:
            raise FailedPrecondition(
                f"dataset {ds.id!r} has a {spec.kind!r} source: its versions come from "
                "`tunelab dataset push` (upload) or job outputs, not from sync"
            )
        version = self.registry.new_version(ds.id, "PENDING")
        self.syncs.submit(version)
        return version

    def resume_unfinished(self) -> int:
        """Restarts syncs a crash or restart interrupted; their staging and hashes are reused."""
        return self.syncs.resume_unfinished()

    def clean_up_interrupted(self) -> threading.Thread:
        """At start: fails the uploads and transforms a restart interrupted, and removes partial
        writes in the background (listing a large store takes a while); returns that thread."""
        fail_interrupted(self.registry, interrupted_before(self.registry, self.started, self.gc_grace_s))
        sweep = threading.Thread(
            target=sweep_partial_writes,
            args=(self.blobs.store, self.partial_write_grace_s),
            name="sweep-partial-writes",
            daemon=True,
        )
        sweep.start()
        return sweep

    def _prewarm(self, version: VersionRecord, root: Path, provenance: dict[str, str]) -> VersionRecord:
        """Hashes and uploads ``root`` into ``version``, then writes the manifest and verifies."""
        progress = PrewarmProgress()
        holder = [version]

        def publish() -> None:
            holder[0] = self.registry.update_version(holder[0], progress=progress.as_dict())

        try:
            manifest = self.prewarmer.manifest_of(root, progress, publish)
            manifest.source = {**provenance}
            self.prewarmer.upload(root, manifest, progress, publish)
            return self._finish(holder[0], manifest, progress)
        except StoreFull as exc:
            raise store_full(self.registry, exc, [holder[0]]) from exc

    def _finish(
        self, version: VersionRecord, manifest: Manifest, progress: PrewarmProgress | None
    ) -> VersionRecord:
        version = self.registry.update_version(version, state="VERIFYING")
        unique = manifest.unique_blobs()
        absent = set(unique) - self.registry.known_blobs(list(unique))
        if absent:
            absent = self.blobs.missing(absent)
        if absent:
            raise FailedPrecondition(
                f"{len(absent)} blob(s) of {version.name} are not in the store "
                f"(e.g. {sorted(absent)[0]}); upload them before committing"
            )
        manifest.created_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.blobs.store.put_bytes(manifest_key(version.dataset_id, version.number), manifest.to_json())
        done = progress.as_dict() if progress else {}
        done.update(phase="ready", current_file="", files_done=len(manifest.files), bytes_done=manifest.size)
        return self.registry.update_version(
            version,
            state="READY",
            progress=done,
            file_count=len(manifest.files),
            size_bytes=manifest.size,
            manifest_digest=manifest.digest(),
            ready_time=time.time(),
        )

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Waits for running syncs (tests and shutdown)."""
        self.syncs.wait_idle(timeout)

    def get_version(self, name: str) -> VersionRecord:
        dataset_id, number = parse_version_name(name)
        return self.registry.get_version(dataset_id, number)

    def list_versions(
        self, dataset_id: str, page_token: str, page_size: int
    ) -> tuple[list[VersionRecord], str]:
        size = _page_size(page_size)
        after = int(page_token) if page_token.isdigit() else 0
        items = self.registry.list_versions(check_id(dataset_id, "dataset"), after, size)
        return items, (str(items[-1].number) if len(items) == size else "")

    def delete_version(self, name: str) -> None:
        dataset_id, number = parse_version_name(name)
        if number is None:
            raise InvalidArgument(f"{name!r}: name the version to delete explicitly, not 'latest'")
        self.registry.delete_version(dataset_id, number)
        self.blobs.store.delete(manifest_key(dataset_id, number))

    def watch_version(self, name: str, active: Callable[[], bool] = lambda: True) -> Iterator[VersionRecord]:
        version = self.get_version(name)
        return self.registry.watch(version.dataset_id, version.number, active)

    def manifest(self, name: str) -> tuple[VersionRecord, Manifest]:
        version = self.get_version(name)
        if version.state != "READY":
            raise FailedPrecondition(
                f"{version.name} is {version.state}, not READY: wait for it (`tunelab dataset watch`)"
            )
        key = manifest_key(version.dataset_id, version.number)
        return version, Manifest.from_json(self.blobs.store.get_bytes(key), key)

    def list_files(
        self, name: str, page_token: str, page_size: int
    ) -> tuple[VersionRecord, list[FileEntry], str]:
        version, manifest = self.manifest(name)
        start = int(page_token) if page_token.isdigit() else 0
        size = _page_size(page_size, default=1000, maximum=10000)
        files = manifest.files[start : start + size]
        nxt = str(start + size) if start + size < len(manifest.files) else ""
        return version, files, nxt

    # -- uploads (client-side content: `upload` sources, job outputs) ---------------------------
    def start_upload(self, dataset_id: str, files: list[FileEntry], provenance: dict[str, str]) -> UploadPlan:
        ds = self.get_dataset(dataset_id)
        if ds.source.get("kind") not in ("upload", "empty"):
            raise FailedPrecondition(
                f"dataset {ds.id!r} has a {ds.source.get('kind')!r} source, which the service fetches "
                "itself; push content only into 'upload' or 'empty' datasets"
            )
        manifest = Manifest(files, source=dict(provenance))
        version = self.registry.new_version(ds.id, "UPLOADING", provenance)
        self.registry.save_upload(ds.id, version.number, manifest.to_json().decode())
        unique = manifest.unique_blobs()
        known = self.registry.known_blobs(list(unique))
        unknown = [sha for sha in unique if sha not in known]
        missing = self.blobs.missing(unknown) if unknown else set()
        self.registry.add_blobs({sha: unique[sha] for sha in unknown if sha not in missing})
        progress = PrewarmProgress(phase="uploading", files_total=len(files), bytes_total=manifest.size)
        version = self.registry.update_version(version, progress=progress.as_dict())
        return UploadPlan(version, sorted(missing))

    def put_blobs(self, blobs: Iterator[tuple[str, int, Iterator[bytes]]]) -> tuple[int, int]:
        """Stores (sha256, size, chunks) blobs as they arrive; indexes them once at the end."""
        stored: dict[str, int] = {}
        try:
            for sha256, size, chunks in blobs:
                try:
                    self.blobs.put_verified_stream(sha256, size, chunks)
                except StoreFull as exc:
                    raise store_full(self.registry, exc, self.registry.uploads_with_blob(sha256)) from exc
                stored[sha256] = size
        finally:
            self.registry.add_blobs(stored)
        return len(stored), sum(stored.values())

    def commit(self, name: str) -> VersionRecord:
        version = self.get_version(name)
        if version.state != "UPLOADING":
            raise FailedPrecondition(
                f"{version.name} is {version.state}; only an uploading version can be committed"
            )
        text = self.registry.get_upload(version.dataset_id, version.number)
        if text is None:
            raise FailedPrecondition(f"{version.name} has no upload in progress")
        manifest = Manifest.from_json(text.encode())
        try:
            version = self._finish(version, manifest, None)
        except StoreFull as exc:
            raise store_full(self.registry, exc, [version]) from exc
        except FailedPrecondition:
            current = self.registry.get_version(version.dataset_id, version.number)
            self.registry.update_version(current, state="UPLOADING")
            raise
        self.registry.drop_upload(version.dataset_id, version.number)
        return version

    def read_blob(self, sha256: str) -> Iterator[bytes]:
        check_sha256(sha256, "sha256")
        if not self.registry.known_blobs([sha256]) and not self.blobs.has(sha256):
            raise NotFound(f"blob {sha256} is not in the store")
        return self.blobs.iter_chunks(sha256)

    # -- transforms and garbage collection -------------------------------------------------
    def transform(self, source_name: str, transform: str, target: str) -> VersionRecord:
        """A new version of ``target`` (``datasets/X`` or ``X``, created if missing, spelled as
        written) made by ``transform`` from the version ``source_name``."""
        fn = TRANSFORMS.get(transform)
        if fn is None:
            raise InvalidArgument(
                f"transform: unknown {transform!r}; available: {', '.join(sorted(TRANSFORMS))}"
            )
        source_version, manifest = self.manifest(source_name)
        target_id, spelling = split_name(target, "datasets", "target")
        try:
            self.registry.get_dataset(target_id)
        except NotFound:
            spec = DerivedSpec(version=source_version.name, transform=transform)
            description = f"{transform} of {source_version.name}"
            self.registry.create_dataset(
                DatasetRecord(
                    target_id, description, spec_to_dict(spec), {}, time.time(), display_name=spelling
                )
            )
        version = self.registry.new_version(
            target_id, "UPLOADING", {"from": source_version.name, "transform": transform}
        )
        try:
            with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
                src = Path(tmp) / "in"
                out = Path(tmp) / "out"
                materialize(
                    manifest, src, self.cache, StoreSource(self.blobs), label=f"{source_version.name}:"
                )
                out.mkdir()
                fn(src, out)
                return self._prewarm(version, out, {"from": source_version.name, "transform": transform})
        except Exception as exc:
            record_failure(self.registry, version, exc)
            raise

    def garbage_collect(self, dry_run: bool) -> tuple[int, int, int]:
        """Deletes blobs no manifest (dataset or environment) or in-flight upload references, and
        what interrupted writes left (counted with the blobs)."""
        partial, partial_bytes = sweep_partial_writes(self.blobs.store, self.partial_write_grace_s, dry_run)
        deleted, freed, kept = collect_garbage(self.blobs, self.registry, self.gc_grace_s, dry_run)
        return deleted + partial, freed + partial_bytes, kept

    def close(self) -> None:
        self.syncs.close()
        self.hash_cache.close()


def _page_size(requested: int, default: int = 100, maximum: int = 1000) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or default, maximum)
