"""Model and adapter weights given as dataset versions, materialized through the datasets service.

Files are listed with ``ListDatasetFiles`` and fetched blob by blob with ``ReadBlob``, verified and
cached by ``tunelab.common.storage`` (the same cache and atomic materialize the job agent uses), into
``<data_dir>/gateway/models/<dataset>/<version>``. The gateway needs no object-store credentials.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import grpc

from tunelab.common.errors import InvalidArgument, NotFound, Unavailable
from tunelab.common.grpc.channel import open_channel
from tunelab.common.storage.blobs import BlobCache
from tunelab.common.storage.manifest import Manifest, check_relative_path
from tunelab.common.storage.materialize import materialize
from tunelab.common.storage.remote import RemoteDatasets
from tunelab.datasets.v1 import datasets_pb2_grpc
from tunelab.gateway.specs import ModelSource

log = logging.getLogger(__name__)

SMALL_FILE_BYTES = 1 << 20  # config.json, adapter_config.json: read whole, never a weight file


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

    def _manifest(self, source: ModelSource) -> tuple[RemoteDatasets, str, Manifest]:
        remote = RemoteDatasets(self._stub(), timeout_s=60)
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
        return remote, resolved, manifest

    def inspect(self, source: ModelSource, names: tuple[str, ...]) -> tuple[str, dict[str, bytes]]:
        """(resolved version, the contents of those of ``names`` the source has in its directory),
        without materializing it: for weights a workload mounts itself. A ``path`` source is read
        where this process sees it (nothing when it does not: the workload may)."""
        if source.path:
            root = Path(source.path) / (
                check_relative_path(source.subpath, "subpath") if source.subpath else ""
            )
            found = {}
            for name in names:
                try:
                    found[name] = (root / name).read_bytes()[:SMALL_FILE_BYTES]
                except OSError:
                    pass
            return "", found
        remote, resolved, manifest = self._manifest(source)
        prefix = f"{check_relative_path(source.subpath, 'subpath')}/" if source.subpath else ""
        if prefix and not any(f.path.startswith(prefix) for f in manifest.files):
            raise NotFound(f"{resolved} has no directory {source.subpath!r}")
        files = {f.path: f for f in manifest.files}
        found = {}
        for name in names:
            entry = files.get(prefix + name)
            if entry is not None and entry.size <= SMALL_FILE_BYTES:
                buf = io.BytesIO()
                remote.fetch(entry.sha256, entry.size, buf)
                found[name] = buf.getvalue()
        return resolved, found

    def resolve(self, source: ModelSource) -> tuple[Path, str]:
        if source.path:
            path = Path(source.path)
            return (path / check_relative_path(source.subpath, "subpath") if source.subpath else path), ""
        remote, resolved, manifest = self._manifest(source)
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
