"""Model and adapter weights given as dataset versions, materialized through the datasets service.

Files are listed with ``ListDatasetFiles`` and fetched blob by blob with ``ReadBlob``, verified and
cached by ``tunelab.common.storage`` (the same cache and atomic materialize the job agent uses), into
``<data_dir>/gateway/models/<dataset>/<version>``. The gateway needs no object-store credentials.
"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from tunelab.common.errors import InvalidArgument, NotFound, Unavailable
from tunelab.common.grpc.channel import open_channel
from tunelab.common.storage.blobs import BlobCache
from tunelab.common.storage.manifest import check_relative_path
from tunelab.common.storage.materialize import materialize
from tunelab.common.storage.remote import RemoteDatasets
from tunelab.datasets.v1 import datasets_pb2_grpc
from tunelab.gateway.specs import ModelSource

log = logging.getLogger(__name__)


def version_name(ref: str) -> str:
    """``datasets/x`` → ``datasets/x/versions/latest``; a version name is kept."""
    if not ref.startswith("datasets/"):
        raise InvalidArgument(f"dataset_version {ref!r}: use datasets/NAME or datasets/NAME/versions/N")
    return ref if "/versions/" in ref else f"{ref}/versions/latest"


class ModelFetcher:
    """Turns a ModelSource into a local directory (and the dataset version it resolved to)."""

    def __init__(self, datasets_addr: str, token: str, root: Path) -> None:
        self.datasets_addr = datasets_addr
        self.token = token
        self.root = root
        self._channel: grpc.Channel | None = None

    def _stub(self) -> datasets_pb2_grpc.DatasetServiceStub:
        if self._channel is None:
            self._channel = open_channel(self.datasets_addr, self.token)
        return datasets_pb2_grpc.DatasetServiceStub(self._channel)

    def resolve(self, source: ModelSource) -> tuple[Path, str]:
        if source.path:
            path = Path(source.path)
            return (path / check_relative_path(source.subpath, "subpath") if source.subpath else path), ""
        stub = self._stub()
        remote = RemoteDatasets(stub, timeout_s=60)
        try:
            resolved, manifest = remote.manifest(version_name(source.dataset_version))
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"{source.dataset_version}: {exc.details()}") from None  # type: ignore[attr-defined]
            raise Unavailable(
                f"cannot list {source.dataset_version} on the datasets service at {self.datasets_addr}: "
                f"{exc.details()} (set TUNELAB_DATASETS_ADDR)"  # type: ignore[attr-defined]
            ) from None
        _, dataset, _, number = resolved.split("/")
        target = self.root / dataset / number
        result = materialize(
            manifest,
            target,
            BlobCache(self.root / ".blobs"),
            remote,
            label=f"{resolved}:",
        )
        log.info(
            "materialized %s", resolved, extra={"path": str(target), "fetched_bytes": result.bytes_fetched}
        )
        path = target / check_relative_path(source.subpath, "subpath") if source.subpath else target
        if not path.is_dir():
            raise NotFound(f"{resolved} has no directory {source.subpath!r}")
        return path, resolved

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
