"""The datasets service's tables (SQLAlchemy Core): datasets, versions, in-flight uploads, blob index.

A column added after a release needs a server default (or to be nullable): ``upgrade`` adds what an
older database lacks when the service starts.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from tunelab.common.ownership import owner_columns
from tunelab.common.state import add_missing_columns

metadata = MetaData()

datasets_t = Table(
    "datasets",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("description", Text, nullable=False, default=""),
    Column("source", Text, nullable=False),
    Column("labels", Text, nullable=False, default="{}"),
    Column("create_time", Float, nullable=False),
    Column("next_version", Integer, nullable=False, default=1),
    # The name as it was first written ("AdvertiseGen" for the id "advertisegen"); added after the
    # first release, so older databases gain it (with '' read as "the id") at start.
    Column("display_name", String(63), nullable=False, server_default=""),
)

versions_t = Table(
    "versions",
    metadata,
    Column("dataset_id", String(63), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("error", Text, nullable=False, default=""),
    Column("progress", Text, nullable=False, default="{}"),
    Column("file_count", Integer, nullable=False, default=0),
    Column("size_bytes", BigInteger, nullable=False, default=0),
    Column("manifest_digest", String(64), nullable=False, default=""),
    Column("provenance", Text, nullable=False, default="{}"),
    Column("create_time", Float, nullable=False),
    Column("ready_time", Float, nullable=True),
    Column("revision", Integer, nullable=False, default=0),
    # The replica fetching and prewarming the version, while it renews its hold on it.
    *owner_columns(),
    ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
)

# Manifests of versions being uploaded by clients, until CommitDatasetVersion writes them out.
uploads_t = Table(
    "uploads",
    metadata,
    Column("dataset_id", String(63), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("manifest", Text, nullable=False),
    ForeignKeyConstraint(
        ["dataset_id", "number"], ["versions.dataset_id", "versions.number"], ondelete="CASCADE"
    ),
)

# Blobs this service has stored or seen in the store: answers "what is missing" without a request
# per blob. Garbage collection keeps it in step with the store.
blobs_t = Table(
    "blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("verified", Boolean, nullable=False, default=True),
)


def upgrade(engine: Engine) -> list[str]:
    """Brings a database made by an earlier release up to these tables; returns the columns added."""
    return add_missing_columns(engine, metadata)
