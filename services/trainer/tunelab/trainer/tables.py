"""The trainer's tables (SQLAlchemy Core): queues, jobs, their attempts, logs and metrics.

Specs and metric points are stored as serialized protobuf messages: they are the contract's
values, and the domain works with them directly. A column added after a release needs a server
default (or to be nullable): ``upgrade`` adds it to a database made before.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError

from tunelab.common.ownership import owner_columns
from tunelab.common.state import add_missing_columns

metadata = MetaData()

queues_t = Table(
    "queues",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("description", Text, nullable=False, default=""),
    Column("labels", Text, nullable=False, default="{}"),
    Column("state", String(16), nullable=False, default="OPEN"),
    Column("gpu_quota", Integer, nullable=True),
    Column("max_concurrent_jobs", Integer, nullable=True),
    Column("cpu_quota_millis", Integer, nullable=True),
    Column("memory_quota_bytes", BigInteger, nullable=True),
    Column("create_time", Float, nullable=False),
    Column("update_time", Float, nullable=False),
)

jobs_t = Table(
    "jobs",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("spec", LargeBinary, nullable=False),
    Column("queue", String(63), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("phase", Text, nullable=False, default=""),
    Column("reason", String(64), nullable=False, default=""),
    Column("message", Text, nullable=False, default=""),
    Column("attempt", Integer, nullable=False, default=0),
    Column("exit_code", Integer, nullable=True),
    Column("failures", Integer, nullable=False, default=0),
    Column("not_before", Float, nullable=True),
    Column("cancel_reason", String(64), nullable=False, default=""),
    Column("cancel_grace_s", Float, nullable=True),
    Column("cancel_time", Float, nullable=True),
    Column("latest_metrics", LargeBinary, nullable=True),
    Column("latest_eval", Text, nullable=False, default="{}"),
    Column("next_line", Integer, nullable=False, default=1),
    Column("create_time", Float, nullable=False),
    Column("start_time", Float, nullable=True),
    Column("end_time", Float, nullable=True),
    Column("update_time", Float, nullable=False),
    Column("revision", Integer, nullable=False, default=0),
    # The replica running the job's current attempt, while it renews its hold (tunelab.common.ownership).
    *owner_columns(),
    Index("jobs_by_state", "state", "priority", "create_time"),
)

# Rows locked to serialize claims that span queues: "gpus" while a claim checks the free GPUs.
claim_locks_t = Table(
    "claim_locks",
    metadata,
    Column("name", String(32), primary_key=True),
)
GPU_LOCK = "gpus"

attempts_t = Table(
    "attempts",
    metadata,
    Column("job_id", String(63), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("reason", String(64), nullable=False, default=""),
    Column("message", Text, nullable=False, default=""),
    Column("exit_code", Integer, nullable=True),
    Column("gpus", Text, nullable=False, default="[]"),
    Column("node", Text, nullable=False, default=""),
    Column("executor_ref", Text, nullable=False, default=""),
    Column("env_key", Text, nullable=False, default=""),
    Column("lease", Text, nullable=False, default=""),
    Column("env_vars", Text, nullable=False, default="{}"),
    Column("worker_count", Integer, nullable=False, default=1),
    Column("start_time", Float, nullable=False),
    Column("end_time", Float, nullable=True),
    Column("last_report_time", Float, nullable=True),
    # A server workload's base URL, where the executor placed it.
    Column("endpoint", Text, nullable=False, default="", server_default=""),
    ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
)

# The highest event sequence stored per (job, attempt, worker): resent batches are stored once.
streams_t = Table(
    "streams",
    metadata,
    Column("job_id", String(63), primary_key=True),
    Column("attempt", Integer, primary_key=True),
    Column("worker", Integer, primary_key=True),
    Column("last_sequence", Integer, nullable=False, default=0),
    ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
)

log_lines_t = Table(
    "log_lines",
    metadata,
    Column("job_id", String(63), primary_key=True),
    Column("line_number", Integer, primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("worker", Integer, nullable=False),
    Column("stream", Integer, nullable=False),
    Column("time", Float, nullable=False),
    Column("text", Text, nullable=False),
    ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
)

metrics_t = Table(
    "metrics",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(63), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("step", Integer, nullable=False),
    Column("has_eval", Integer, nullable=False, default=0),
    Column("point", LargeBinary, nullable=False),
    ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
    Index("metrics_by_job", "job_id", "id"),
)


def upgrade(engine: Engine) -> list[str]:
    """Brings a database made by an earlier release up to these tables; returns the columns added."""
    added = add_missing_columns(engine, metadata)
    try:
        with engine.begin() as db:
            if db.execute(select(claim_locks_t).where(claim_locks_t.c.name == GPU_LOCK)).first() is None:
                db.execute(insert(claim_locks_t).values(name=GPU_LOCK))
    except IntegrityError:
        pass  # another replica starting at the same time made it
    return added
