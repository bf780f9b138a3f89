"""The DatasetService gRPC servicer: proto in, domain call, proto out."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from tunelab.common.errors import InvalidArgument
from tunelab.common.names import parse_name
from tunelab.datasets import convert
from tunelab.datasets.store import DatasetStore
from tunelab.datasets.v1 import datasets_pb2 as pb
from tunelab.datasets.v1 import datasets_pb2_grpc


class DatasetServicer(datasets_pb2_grpc.DatasetServiceServicer):
    def __init__(self, store: DatasetStore) -> None:
        self.store = store

    def CreateDataset(
        self, request: pb.CreateDatasetRequest, context: grpc.ServicerContext
    ) -> pb.CreateDatasetResponse:
        d = request.dataset
        source = convert.source_from_pb(d.source)
        ds, _ = self.store.create_dataset(
            request.dataset_id, source, d.description, dict(d.labels), d.display_name
        )
        return pb.CreateDatasetResponse(dataset=convert.dataset_to_pb(ds))

    def GetDataset(
        self, request: pb.GetDatasetRequest, context: grpc.ServicerContext
    ) -> pb.GetDatasetResponse:
        ds = self.store.get_dataset(parse_name(request.name, "datasets", "name"))
        return pb.GetDatasetResponse(dataset=convert.dataset_to_pb(ds))

    def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext
    ) -> pb.ListDatasetsResponse:
        items, token = self.store.list_datasets(request.page_token, request.page_size)
        return pb.ListDatasetsResponse(
            datasets=[convert.dataset_to_pb(d) for d in items], next_page_token=token
        )

    def DeleteDataset(
        self, request: pb.DeleteDatasetRequest, context: grpc.ServicerContext
    ) -> pb.DeleteDatasetResponse:
        self.store.delete_dataset(parse_name(request.name, "datasets", "name"))
        return pb.DeleteDatasetResponse()

    def SyncDataset(
        self, request: pb.SyncDatasetRequest, context: grpc.ServicerContext
    ) -> pb.SyncDatasetResponse:
        version = self.store.sync(parse_name(request.name, "datasets", "name"))
        return pb.SyncDatasetResponse(version=convert.version_to_pb(version))

    def GetDatasetVersion(
        self, request: pb.GetDatasetVersionRequest, context: grpc.ServicerContext
    ) -> pb.GetDatasetVersionResponse:
        return pb.GetDatasetVersionResponse(
            version=convert.version_to_pb(self.store.get_version(request.name))
        )

    def ListDatasetVersions(
        self, request: pb.ListDatasetVersionsRequest, context: grpc.ServicerContext
    ) -> pb.ListDatasetVersionsResponse:
        dataset_id = parse_name(request.parent, "datasets", "parent")
        items, token = self.store.list_versions(dataset_id, request.page_token, request.page_size)
        return pb.ListDatasetVersionsResponse(
            versions=[convert.version_to_pb(v) for v in items], next_page_token=token
        )

    def DeleteDatasetVersion(
        self, request: pb.DeleteDatasetVersionRequest, context: grpc.ServicerContext
    ) -> pb.DeleteDatasetVersionResponse:
        self.store.delete_version(request.name)
        return pb.DeleteDatasetVersionResponse()

    def WatchDatasetVersion(
        self, request: pb.WatchDatasetVersionRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchDatasetVersionResponse]:
        for version in self.store.watch_version(request.name, context.is_active):
            yield pb.WatchDatasetVersionResponse(version=convert.version_to_pb(version))

    def ListDatasetFiles(
        self, request: pb.ListDatasetFilesRequest, context: grpc.ServicerContext
    ) -> pb.ListDatasetFilesResponse:
        version, files, token = self.store.list_files(request.parent, request.page_token, request.page_size)
        return pb.ListDatasetFilesResponse(
            files=[convert.file_to_pb(f) for f in files], next_page_token=token, version=version.name
        )

    def StartUpload(
        self, request: pb.StartUploadRequest, context: grpc.ServicerContext
    ) -> pb.StartUploadResponse:
        dataset_id = parse_name(request.parent, "datasets", "parent")
        files = [convert.file_from_pb(f) for f in request.files]
        plan = self.store.start_upload(dataset_id, files, dict(request.provenance))
        return pb.StartUploadResponse(
            version=convert.version_to_pb(plan.version), missing_sha256=plan.missing
        )

    def UploadBlobs(
        self, request_iterator: Iterator[pb.UploadBlobsRequest], context: grpc.ServicerContext
    ) -> pb.UploadBlobsResponse:
        stored, stored_bytes = self.store.put_blobs(iter(_BlobStream(request_iterator)))
        return pb.UploadBlobsResponse(blobs_stored=stored, bytes_stored=stored_bytes)

    def CommitDatasetVersion(
        self, request: pb.CommitDatasetVersionRequest, context: grpc.ServicerContext
    ) -> pb.CommitDatasetVersionResponse:
        return pb.CommitDatasetVersionResponse(version=convert.version_to_pb(self.store.commit(request.name)))

    def ReadBlob(
        self, request: pb.ReadBlobRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ReadBlobResponse]:
        for chunk in self.store.read_blob(request.sha256):
            yield pb.ReadBlobResponse(data=chunk)

    def TransformDataset(
        self, request: pb.TransformDatasetRequest, context: grpc.ServicerContext
    ) -> pb.TransformDatasetResponse:
        version = self.store.transform(request.source_version, request.transform, request.target)
        return pb.TransformDatasetResponse(version=convert.version_to_pb(version))

    def GarbageCollectBlobs(
        self, request: pb.GarbageCollectBlobsRequest, context: grpc.ServicerContext
    ) -> pb.GarbageCollectBlobsResponse:
        deleted, freed, kept = self.store.garbage_collect(request.dry_run)
        return pb.GarbageCollectBlobsResponse(blobs_deleted=deleted, bytes_deleted=freed, blobs_kept=kept)


class _BlobStream:
    """Splits the UploadBlobs stream into (sha256, size, chunks) per blob: the first message of a
    blob names it, the following ones (with an empty sha256) continue it."""

    def __init__(self, requests: Iterator[pb.UploadBlobsRequest]) -> None:
        self._it = iter(requests)
        self._head = next(self._it, None)

    def __iter__(self) -> Iterator[tuple[str, int, Iterator[bytes]]]:
        while self._head is not None:
            head, self._head = self._head, None
            if not head.sha256:
                raise InvalidArgument("UploadBlobs: the first message of each blob must set sha256 and size")
            chunks = self._chunks(head)
            yield head.sha256, head.size, chunks
            for _ in chunks:  # drain what the consumer left, so the stream stays aligned
                pass

    def _chunks(self, first: pb.UploadBlobsRequest) -> Iterator[bytes]:
        if first.data:
            yield first.data
        for msg in self._it:
            if msg.sha256:
                self._head = msg
                return
            yield msg.data
