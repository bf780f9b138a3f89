"""The state store: SQLAlchemy Core on SQLite by default (WAL, one file per service); a
``TUNELAB_STATE_URL`` pointing at Postgres takes over when a service runs replicas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event


def open_database(url: str, default_path: Path, metadata: MetaData) -> Engine:
    """Opens (and creates the tables of) the state database at ``url`` or at ``default_path``."""
    if not url:
        default_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{default_path}"
    engine = create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    metadata.create_all(engine)
    return engine
