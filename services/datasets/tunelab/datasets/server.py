"""Assembles the datasets service from settings: ``build_server(settings)``."""

from __future__ import annotations

from tunelab.common.grpc.server import GrpcServer, Registration
from tunelab.common.ownership import replica_name
from tunelab.common.state import open_database
from tunelab.common.storage.blobs import BlobStore
from tunelab.common.storage.objectstore import open_store
from tunelab.datasets.registry import Registry
from tunelab.datasets.servicer import DatasetServicer
from tunelab.datasets.settings import DatasetSettings
from tunelab.datasets.sources.spec import FetchPolicy
from tunelab.datasets.store import DatasetStore
from tunelab.datasets.tables import metadata, upgrade
from tunelab.datasets.v1 import datasets_pb2, datasets_pb2_grpc


def build_store(settings: DatasetSettings) -> DatasetStore:
    data_dir = settings.data_dir / "datasets"
    engine = open_database(settings.state_url, data_dir / "state.sqlite", metadata)
    upgrade(engine)
    store = open_store(settings)
    if hasattr(store, "ensure_bucket"):
        store.ensure_bucket()
    policy = FetchPolicy(
        allow_private_addresses=settings.allow_private_addresses,
        connect_timeout_s=settings.connect_timeout_s,
        read_timeout_s=settings.read_timeout_s,
        attempts=settings.fetch_attempts,
        max_download_bytes=settings.max_download_bytes,
        max_archive_bytes=settings.max_archive_bytes,
        max_archive_ratio=settings.max_archive_ratio,
        max_archive_files=settings.max_archive_files,
        allowed_networks=settings.allowed_networks,
        retry_backoff_s=settings.retry_backoff_s,
        git_timeout_s=settings.git_timeout_s,
    )
    return DatasetStore(
        Registry(engine),
        BlobStore(store, workers=settings.transfer_workers),
        data_dir,
        policy=policy,
        sync_workers=settings.sync_workers,
        transfer_workers=settings.transfer_workers,
        gc_grace_s=settings.gc_grace_s,
        partial_write_grace_s=settings.partial_write_grace_s,
        replica=replica_name(settings.replica_id, settings.data_dir),
        lease_s=settings.replica_lease_s,
    )


def build_server(settings: DatasetSettings) -> tuple[GrpcServer, DatasetStore]:
    store = build_store(settings)
    full_name = datasets_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name
    server = GrpcServer(
        "datasets",
        f"{settings.host}:{settings.port}",
        [
            Registration(
                full_name, datasets_pb2_grpc.add_DatasetServiceServicer_to_server, DatasetServicer(store)
            )
        ],
        auth_token=settings.auth_token.get_secret_value(),
        metrics_port=settings.metrics_port or None,
        on_stop=store.close,
    )
    return server, store
