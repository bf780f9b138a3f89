"""The environments service's state tables (SQLAlchemy Core; SQLite by default, Postgres for
replicas). A column added after a release needs a server default (or to be nullable): ``upgrade``
adds what an older database lacks when the service starts."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Engine, Float, Integer, MetaData, String, Table, Text

from tunelab.common.ownership import owner_columns
from tunelab.common.state import add_missing_columns

metadata = MetaData()

# One row per named environment. `spec` is stored without index passwords.
environments_t = Table(
    "environments",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("description", Text, nullable=False, default=""),
    Column("labels", Text, nullable=False, default="{}"),
    Column("spec", Text, nullable=False),
    Column("spec_identity", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("phase", String(16), nullable=False, default=""),
    Column("error", Text, nullable=False, default=""),
    Column("env_key", String(64), nullable=False, default=""),
    Column("lock", Text, nullable=False, default=""),
    Column("resolved_python", String(32), nullable=False, default=""),
    Column("resolved_platform", String(64), nullable=False, default=""),
    Column("package_count", Integer, nullable=False, default=0),
    Column("cache_hit", Boolean, nullable=False, default=False),
    Column("create_time", Float, nullable=False),
    Column("ready_time", Float, nullable=True),
    Column("last_used_time", Float, nullable=True),
    Column("revision", Integer, nullable=False, default=0),
    # The replica resolving and building it, while it renews its hold on it.
    *owner_columns(),
)

# Build logs, kept after FAILED.
logs_t = Table(
    "build_logs",
    metadata,
    Column("env_id", String(63), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("time", Float, nullable=False),
    Column("phase", String(16), nullable=False),
    Column("text", Text, nullable=False),
)

# Stored builds (READY only), shared by every environment whose spec resolves to the key.
builds_t = Table(
    "builds",
    metadata,
    Column("env_key", String(64), primary_key=True),
    Column("python_version", String(32), nullable=False),
    Column("platform", String(64), nullable=False),
    Column("package_count", Integer, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("stored_bytes", BigInteger, nullable=False),
    Column("layers", Text, nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("ready_time", Float, nullable=False),
)

# Packed layers by layer key (distribution + Python + platform) → blob.
layers_t = Table(
    "layers",
    metadata,
    Column("layer_key", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("unpacked", BigInteger, nullable=False),
    Column("files", Integer, nullable=False),
)

# The last resolution of a spec on an interpreter: lets an identical spec skip the resolver.
resolutions_t = Table(
    "resolutions",
    metadata,
    Column("resolution_key", String(64), primary_key=True),
    Column("env_key", String(64), nullable=False),
    Column("lock", Text, nullable=False),
    Column("package_count", Integer, nullable=False),
    Column("resolve_time", Float, nullable=False),
)

leases_t = Table(
    "leases",
    metadata,
    Column("env_id", String(63), primary_key=True),
    Column("lease_id", String(32), primary_key=True),
    Column("holder", Text, nullable=False),
    Column("env_key", String(64), nullable=False),
    Column("create_time", Float, nullable=False),
    Column("expire_time", Float, nullable=False),
)


def upgrade(engine: Engine) -> list[str]:
    """Brings a database made by an earlier release up to these tables; returns the columns added."""
    return add_missing_columns(engine, metadata)
