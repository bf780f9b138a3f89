"""Settings shared by every service, read once at start from ``TUNELAB_*`` environment variables.

Each service subclasses :class:`ServiceSettings` and adds its own fields. Defaults sit beside each
field; a bad value fails at start with a message naming the variable to set.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tunelab.common.errors import InvalidArgument

DEFAULT_PORTS = {"datasets": 50051, "environments": 50052, "trainer": 50053, "gateway": 50054}
DEFAULT_METRICS_PORTS = {"datasets": 9101, "environments": 9102, "trainer": 9103, "gateway": 9104}
# Services with an HTTP front door besides gRPC: the gateway's Triton, OpenAI and KServe v2 routes.
DEFAULT_HTTP_PORTS = {"gateway": 8000}


class StoreSettings(BaseSettings):
    """Where blobs, manifests and environments are stored (one bucket, see DESIGN.md)."""

    model_config = SettingsConfigDict(env_prefix="TUNELAB_", extra="ignore")

    data_dir: Path = Field(
        default=Path.home() / ".tunelab",
        description="Working directory for state, staging and caches.",
    )
    store_url: str = Field(
        default="",
        description="file:///path for a local directory store, or s3://bucket for S3/MinIO. "
        "Empty: a local store under data_dir/store.",
    )
    s3_endpoint: str = Field(default="", description="host:port of the S3/MinIO server; empty: AWS.")
    s3_access_key: str = Field(default="", description="S3 access key; empty: the SDK's own chain.")
    s3_secret_key: SecretStr = Field(default=SecretStr(""), description="S3 secret key.")
    s3_region: str = Field(default="", description="S3 region; empty: the server's default.")
    s3_secure: bool = Field(default=True, description="Use https to reach the S3 endpoint.")
    s3_part_size: int = Field(
        default=64 * 1024 * 1024, ge=5 * 1024 * 1024, description="Multipart upload part size (bytes)."
    )
    transfer_workers: int = Field(default=16, ge=1, le=256, description="Parallel transfers.")

    def resolved_store_url(self) -> str:
        return self.store_url or (self.data_dir / "store").resolve().as_uri()


class ServiceSettings(StoreSettings):
    """Settings every gRPC service has."""

    log_level: str = Field(default="info", description="debug, info, warning or error (JSON lines).")
    auth_token: SecretStr = Field(
        default=SecretStr(""),
        description="Bearer token clients must send; empty disables auth (embedded stack only).",
    )
    host: str = Field(default="127.0.0.1", description="Listen address of gRPC and /metrics.")
    state_url: str = Field(
        default="", description="SQLAlchemy URL of the state database; empty: SQLite in data_dir."
    )
    grace_period_s: float = Field(default=10.0, description="How long SIGTERM waits for RPCs.")
    replica_id: str = Field(
        default="",
        description="This replica's name in the state database (who runs which job, sync or build); "
        "empty: hostname:data_dir. Replicas sharing a database need distinct names.",
    )
    replica_lease_s: float = Field(
        default=30.0,
        gt=0,
        description="How long a replica's hold on the work it runs lasts unrenewed (it renews every "
        "third of it): work of a replica that died is taken over by another after this.",
    )


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: object) -> S:
    """Builds settings, turning a validation error into one message naming the variables."""
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        problems = "; ".join(
            f"{prefix}{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidArgument(f"invalid settings: {problems}") from exc
