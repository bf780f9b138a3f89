"""DatasetClient: the datasets service as Python calls, including push (upload a folder as a new
version, sending only blobs the store lacks) and pull (verified materialize through a local cache)."""

from __future__ import annotations

import builtins
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from tunelab.common.storage.blobs import BlobCache
from tunelab.common.storage.hashing import HashCache
from tunelab.common.storage.manifest import FileEntry, Manifest, file_mode, walk_files
from tunelab.common.storage.materialize import MaterializeResult, materialize
from tunelab.common.storage.remote import RemoteDatasets
from tunelab.datasets.v1 import datasets_pb2 as pb
from tunelab.datasets.v1 import datasets_pb2_grpc

Progress = Callable[[int, int], None]
CHUNK = 4 * 1024 * 1024
STREAMS = 16


def dataset_name(name: str) -> str:
    return name if name.startswith("datasets/") else f"datasets/{name}"


def version_name(ref: str) -> str:
    """``x`` / ``x@3`` / ``x@latest`` / ``datasets/x/versions/3`` → a version resource name."""
    if ref.startswith("datasets/"):
        return ref if "/versions/" in ref else f"{ref}/versions/latest"
    ident, _, ver = ref.partition("@")
    return f"datasets/{ident}/versions/{ver or 'latest'}"


class DatasetClient:
    def __init__(self, channel: grpc.Channel, cache_dir: Path, *, address: str = "") -> None:
        self.stub = datasets_pb2_grpc.DatasetServiceStub(channel)
        self.remote = RemoteDatasets(self.stub)
        self.address = address
        self.cache_dir = cache_dir
        self._hashes: HashCache | None = None

    @property
    def hashes(self) -> HashCache:
        if self._hashes is None:
            self._hashes = HashCache(self.cache_dir / "hashes.sqlite")
        return self._hashes

    # -- datasets ---------------------------------------------------------------------------
    def create(
        self, dataset_id: str, source: pb.Source, description: str = "", labels: dict[str, str] | None = None
    ) -> pb.Dataset:
        ds = pb.Dataset(source=source, description=description, labels=labels or {})
        return self.stub.CreateDataset(pb.CreateDatasetRequest(dataset_id=dataset_id, dataset=ds)).dataset

    def get(self, name: str) -> pb.Dataset:
        return self.stub.GetDataset(pb.GetDatasetRequest(name=dataset_name(name))).dataset

    def list(self) -> Iterator[pb.Dataset]:
        token = ""
        while True:
            resp = self.stub.ListDatasets(pb.ListDatasetsRequest(page_token=token))
            yield from resp.datasets
            token = resp.next_page_token
            if not token:
                return

    def delete(self, name: str) -> None:
        self.stub.DeleteDataset(pb.DeleteDatasetRequest(name=dataset_name(name)))

    # -- versions ---------------------------------------------------------------------------
    def sync(self, name: str) -> pb.DatasetVersion:
        return self.stub.SyncDataset(pb.SyncDatasetRequest(name=dataset_name(name))).version

    def get_version(self, ref: str) -> pb.DatasetVersion:
        return self.stub.GetDatasetVersion(pb.GetDatasetVersionRequest(name=version_name(ref))).version

    def list_versions(self, name: str) -> Iterator[pb.DatasetVersion]:
        token = ""
        while True:
            resp = self.stub.ListDatasetVersions(
                pb.ListDatasetVersionsRequest(parent=dataset_name(name), page_token=token)
            )
            yield from resp.versions
            token = resp.next_page_token
            if not token:
                return

    def delete_version(self, ref: str) -> None:
        self.stub.DeleteDatasetVersion(pb.DeleteDatasetVersionRequest(name=version_name(ref)))

    def watch(self, ref: str) -> Iterator[pb.DatasetVersion]:
        for resp in self.stub.WatchDatasetVersion(pb.WatchDatasetVersionRequest(name=version_name(ref))):
            yield resp.version

    def list_files(self, ref: str) -> Iterator[pb.DatasetFile]:
        for _, files in self.remote.file_pages(version_name(ref)):
            yield from files

    def transform(self, source_ref: str, transform: str, target: str) -> pb.DatasetVersion:
        req = pb.TransformDatasetRequest(
            source_version=version_name(source_ref), transform=transform, target=dataset_name(target)
        )
        return self.stub.TransformDataset(req).version

    def gc(self, dry_run: bool) -> pb.GarbageCollectBlobsResponse:
        return self.stub.GarbageCollectBlobs(pb.GarbageCollectBlobsRequest(dry_run=dry_run))

    # -- push and pull ----------------------------------------------------------------------
    def manifest_of(self, directory: Path, workers: int = 4) -> Manifest:
        """Hashes ``directory`` (unchanged files come from the hash cache without being read)."""
        found = walk_files(directory, skip=(".tunelab-manifest.json",))
        digests = self.hashes.hash_files([(p, st) for _, p, st in found], workers=workers)
        return Manifest(
            [
                FileEntry(rel, st.st_size, sha, file_mode(st))
                for (rel, _, st), sha in zip(found, digests, strict=True)
            ]
        )

    def push(
        self,
        dataset_id: str,
        directory: Path,
        progress: Progress | None = None,
        provenance: dict[str, str] | None = None,
    ) -> pb.DatasetVersion:
        """Uploads ``directory`` as a new version of ``dataset_id``; returns it READY."""
        manifest = self.manifest_of(directory)
        start = self.stub.StartUpload(
            pb.StartUploadRequest(
                parent=dataset_name(dataset_id),
                files=[
                    pb.DatasetFile(path=f.path, size=f.size, sha256=f.sha256, mode=f.mode)
                    for f in manifest.files
                ],
                provenance=provenance or {},
            )
        )
        paths = {f.sha256: directory / f.path for f in manifest.files}
        sizes = manifest.unique_blobs()
        missing = list(start.missing_sha256)
        total = sum(sizes[s] for s in missing)
        self._send_blobs(missing, paths, sizes, total, progress)
        return self.stub.CommitDatasetVersion(pb.CommitDatasetVersionRequest(name=start.version.name)).version

    def _send_blobs(
        self,
        missing: builtins.list[str],
        paths: dict[str, Path],
        sizes: dict[str, int],
        total: int,
        progress: Progress | None,
    ) -> None:
        if progress:
            progress(0, total)
        if not missing:
            return
        # Spread blobs over a few concurrent streams, largest first, each to the emptiest stream.
        lanes: builtins.list[builtins.list[str]] = [[] for _ in range(min(STREAMS, len(missing)))]
        loads = [0] * len(lanes)
        for sha in sorted(missing, key=lambda s: -sizes[s]):
            i = loads.index(min(loads))
            lanes[i].append(sha)
            loads[i] += sizes[sha]
        done = [0]
        lock = threading.Lock()

        def messages(lane: builtins.list[str]) -> Iterator[pb.UploadBlobsRequest]:
            for sha in lane:
                with paths[sha].open("rb") as src:
                    first = True
                    while True:
                        data = src.read(CHUNK)
                        if first:
                            yield pb.UploadBlobsRequest(sha256=sha, size=sizes[sha], data=data)
                            first = False
                        elif data:
                            yield pb.UploadBlobsRequest(data=data)
                        if data and progress:
                            with lock:
                                done[0] += len(data)
                                progress(done[0], total)
                        if len(data) < CHUNK:
                            break

        with ThreadPoolExecutor(len(lanes)) as pool:
            for future in [pool.submit(self.stub.UploadBlobs, messages(lane)) for lane in lanes]:
                future.result()

    def pull(
        self,
        ref: str,
        directory: Path,
        progress: Progress | None = None,
        *,
        copy: bool = False,
        marker: Path | None = None,
    ) -> MaterializeResult:
        """Materializes a version into ``directory`` (verified, cached; atomic). Files are read-only
        hard links into the local cache unless ``copy`` asks for writable copies; ``marker`` keeps
        the record of what the directory holds outside it."""
        resolved, manifest = self.remote.manifest(version_name(ref))
        return materialize(
            manifest,
            directory,
            BlobCache(self.cache_dir / "blobs"),
            self.remote,
            progress=progress,
            label=f"{resolved}:",
            link=not copy,
            marker=marker,
        )
