"""Settings of the datasets service (``TUNELAB_*``)."""

from __future__ import annotations

from pydantic import Field

from tunelab.common.netguard import AllowedNetworks
from tunelab.common.settings import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, ServiceSettings


class DatasetSettings(ServiceSettings):
    port: int = Field(default=DEFAULT_PORTS["datasets"], description="gRPC port (TUNELAB_PORT).")
    metrics_port: int = Field(default=DEFAULT_METRICS_PORTS["datasets"], description="0 disables /metrics.")
    sync_workers: int = Field(default=2, ge=1, description="Datasets fetched and prewarmed at once.")
    allow_private_addresses: bool = Field(
        default=False,
        description="Allow sources on loopback, private, link-local and metadata addresses (SSRF guard).",
    )
    max_download_bytes: int = Field(default=500 * 1024**3, description="Largest download of one source.")
    max_archive_bytes: int = Field(default=200 * 1024**3, description="Largest unpacked archive.")
    max_archive_ratio: float = Field(default=200.0, description="Largest unpacked/packed size ratio.")
    max_archive_files: int = Field(default=1_000_000, description="Most entries an archive may unpack.")
    allowed_networks: AllowedNetworks = Field(
        default=(), description="CIDRs sources may use even while the SSRF guard is on, e.g. 10.0.0.0/8."
    )
    fetch_attempts: int = Field(default=4, ge=1, description="Tries of each download before it fails.")
    retry_backoff_s: float = Field(default=0.5, description="First pause between fetch attempts.")
    git_timeout_s: float = Field(default=3600.0, description="Limit for each git command.")
    connect_timeout_s: float = Field(default=10.0, description="Connecting to a source's server.")
    read_timeout_s: float = Field(default=60.0, description="Longest silence of a source's server.")
    gc_grace_s: float = Field(default=3600.0, description="Blobs younger than this are never collected.")
    partial_write_grace_s: float = Field(
        default=600.0,
        ge=0,
        description="What an interrupted write left in the store (.tmp-* files, incomplete multipart "
        "uploads) is removed at start and by garbage collection once untouched this long (a write in "
        "progress touches it with every chunk; replicas sharing the store may be writing).",
    )
