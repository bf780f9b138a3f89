"""Assembles the environments service from settings: ``build_server(settings)``."""

from __future__ import annotations

import os

import uv as uv_package

from tunelab.common.grpc.server import GrpcServer, Registration
from tunelab.common.netguard import NetPolicy
from tunelab.common.ownership import replica_name
from tunelab.common.state import open_database
from tunelab.common.storage.blobs import BlobStore
from tunelab.common.storage.objectstore import open_store
from tunelab.environments.builder import Builder, Pins
from tunelab.environments.catalog import Catalog
from tunelab.environments.gc import Collector
from tunelab.environments.jobs import BuildJobs
from tunelab.environments.metrics import BuildMetrics
from tunelab.environments.registry import Registry
from tunelab.environments.servicer import EnvironmentServicer
from tunelab.environments.settings import EnvironmentSettings
from tunelab.environments.store import EnvironmentStore
from tunelab.environments.tables import metadata, upgrade
from tunelab.environments.uv import Uv
from tunelab.environments.v1 import environments_pb2, environments_pb2_grpc


def build_store(settings: EnvironmentSettings, metrics: BuildMetrics | None = None) -> EnvironmentStore:
    data_dir = settings.data_dir / "environments"
    engine = open_database(settings.state_url, data_dir / "state.sqlite", metadata)
    upgrade(engine)
    store = open_store(settings)
    if hasattr(store, "ensure_bucket"):
        store.ensure_bucket()
    blobs = BlobStore(store, workers=settings.transfer_workers)
    registry, catalog, pins = Registry(engine), Catalog(engine), Pins()
    uv = Uv(
        settings.uv_bin or uv_package.find_uv_bin(),
        settings.uv_cache_dir or data_dir / "uv-cache",
        http_timeout_s=settings.http_timeout_s,
        http_retries=settings.http_retries,
        default_index_url=settings.default_index_url,
        pythons=settings.pythons,
    )
    # Builds happen next to the uv cache (same filesystem: installs hard-link out of the cache).
    builder = Builder(
        uv,
        blobs,
        catalog,
        data_dir / "builds",
        pins,
        zstd_level=settings.zstd_level,
        pack_workers=os.cpu_count() or 2,
    )
    builder.clean()
    jobs = BuildJobs(
        registry,
        catalog,
        builder,
        uv,
        workers=settings.build_workers,
        build_timeout_s=settings.build_timeout_s,
        resolve_ttl_s=settings.resolve_cache_ttl_s,
        metrics=metrics,
        replica=replica_name(settings.replica_id, settings.data_dir),
        lease_s=settings.replica_lease_s,
    )
    return EnvironmentStore(
        registry,
        catalog,
        jobs,
        Collector(registry, catalog, blobs, pins),
        uv,
        blobs,
        allow_unsafe=settings.allow_unsafe_requirements,
        net_policy=NetPolicy(
            "environments", settings.allow_private_addresses, tuple(settings.allowed_networks)
        ),
        lease_ttl_s=settings.lease_ttl_s,
        gc_budget=settings.gc_max_total_bytes,
        replica_lease_s=settings.replica_lease_s,
    )


def build_server(settings: EnvironmentSettings) -> tuple[GrpcServer, EnvironmentStore]:
    metrics = BuildMetrics()
    store = build_store(settings, metrics)
    full_name = environments_pb2.DESCRIPTOR.services_by_name["EnvironmentService"].full_name
    add = environments_pb2_grpc.add_EnvironmentServiceServicer_to_server
    server = GrpcServer(
        "environments",
        f"{settings.host}:{settings.port}",
        [Registration(full_name, add, EnvironmentServicer(store))],
        auth_token=settings.auth_token.get_secret_value(),
        registry=metrics.registry,
        metrics_port=settings.metrics_port or None,
        on_stop=store.close,
    )
    return server, store
