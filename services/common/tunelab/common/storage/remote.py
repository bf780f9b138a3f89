"""Reading dataset versions through the datasets service, for processes that have no object-store
credentials (the CLI, the job agent, the gateway): manifests page by page, blobs as streams."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from tunelab.common.storage.blobs import write_verified
from tunelab.common.storage.manifest import FileEntry, Manifest
from tunelab.datasets.v1 import datasets_pb2 as pb
from tunelab.datasets.v1 import datasets_pb2_grpc


class RemoteDatasets:
    """A BlobSource over ``ReadBlob``, and manifests over ``ListDatasetFiles``."""

    def __init__(self, stub: datasets_pb2_grpc.DatasetServiceStub, timeout_s: float | None = None) -> None:
        self._stub = stub
        self._timeout = timeout_s

    def fetch(self, sha256: str, size: int, dest: BinaryIO) -> None:
        chunks = (
            r.data for r in self._stub.ReadBlob(pb.ReadBlobRequest(sha256=sha256), timeout=self._timeout)
        )
        write_verified(sha256, size, chunks, dest)

    def file_pages(self, version: str) -> Iterator[tuple[str, list[pb.DatasetFile]]]:
        """Pages of ``version``'s files as (resolved version name, files). Later pages come from the
        version the first page resolved, even if a newer one became "latest" meanwhile."""
        token = ""
        parent = version
        while True:
            req = pb.ListDatasetFilesRequest(parent=parent, page_token=token, page_size=10000)
            resp = self._stub.ListDatasetFiles(req, timeout=self._timeout)
            parent = resp.version
            yield resp.version, list(resp.files)
            token = resp.next_page_token
            if not token:
                return

    def manifest(self, version: str) -> tuple[str, Manifest]:
        """(resolved version name, manifest) of a READY version."""
        files: list[FileEntry] = []
        resolved = version
        for name, page in self.file_pages(version):
            resolved = name
            files.extend(FileEntry(f.path, f.size, f.sha256, f.mode or 0o644) for f in page)
        return resolved, Manifest(files)
