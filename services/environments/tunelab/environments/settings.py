"""Settings of the environments service (``TUNELAB_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from tunelab.common.netguard import AllowedNetworks
from tunelab.common.settings import DEFAULT_METRICS_PORTS, DEFAULT_PORTS, ServiceSettings


class EnvironmentSettings(ServiceSettings):
    port: int = Field(default=DEFAULT_PORTS["environments"], description="gRPC port (TUNELAB_PORT).")
    metrics_port: int = Field(
        default=DEFAULT_METRICS_PORTS["environments"], description="0 disables /metrics."
    )
    build_workers: int = Field(default=2, ge=1, description="Environments resolved and built at once.")
    uv_bin: str = Field(default="", description="The uv executable; empty: the one installed with us.")
    uv_cache_dir: Path | None = Field(
        default=None,
        description="uv's cache; empty: data_dir/environments/uv-cache. Keep it on the build "
        "directory's filesystem so installs hard-link instead of copying.",
    )
    pythons: list[str] = Field(
        default_factory=list,
        description="Interpreters environments may be built on (the base image's); empty: every "
        "interpreter uv finds on this machine.",
    )
    default_index_url: str = Field(default="", description="Default index (a PyPI mirror); empty: PyPI.")
    allow_unsafe_requirements: bool = Field(
        default=False,
        description="Honour a spec's allow_unsafe_requirements (local paths, -e, index options).",
    )
    allow_private_addresses: bool = Field(
        default=False,
        description="Let specs reach loopback, private, link-local and metadata addresses (SSRF guard): "
        "their indexes, direct URLs and index options.",
    )
    allowed_networks: AllowedNetworks = Field(
        default=(),
        description="CIDRs a spec may reach even while the SSRF guard is on, e.g. an on-prem index's "
        "10.0.0.0/8.",
    )
    http_timeout_s: int = Field(default=30, ge=1, description="uv's timeout for one HTTP read.")
    http_retries: int = Field(default=2, ge=0, description="uv's retries of a failed HTTP request.")
    build_timeout_s: float = Field(default=1800.0, gt=0, description="Longest one build may take.")
    resolve_cache_ttl_s: float = Field(
        default=600.0,
        ge=0,
        description="How long index answers count as fresh (PyPI's own max-age is 600 s): an identical "
        "spec reuses its last resolution, and a resolution whose packages were all fetched within it "
        "is made offline from uv's cache (0: always ask the index; exclude_newer specs are reused "
        "indefinitely).",
    )
    gc_max_total_bytes: int = Field(
        default=50 * 1024**3, ge=0, description="Size budget of stored builds for garbage collection."
    )
    lease_ttl_s: float = Field(default=3600.0, gt=0, description="Default lease lifetime.")
    zstd_level: int = Field(
        default=1,
        ge=-7,
        le=19,
        description="zstd level of packed layers (packing is CPU-bound: keep it low).",
    )
