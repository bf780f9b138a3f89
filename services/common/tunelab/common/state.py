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


def add_missing_columns(engine: Engine, metadata: MetaData) -> list[str]:
    """Adds the columns ``metadata`` declares that an existing database lacks (a database made by an
    earlier release); returns them as ``table.column``. Each such column needs a server default or
    must be nullable. Replicas starting together are fine: a column another one added is skipped."""
    from sqlalchemy import inspect, text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.schema import CreateColumn

    added: list[str] = []
    quote = engine.dialect.identifier_preparer.format_table
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            ddl = CreateColumn(column).compile(dialect=engine.dialect)
            try:
                with engine.begin() as db:
                    db.execute(text(f"ALTER TABLE {quote(table)} ADD COLUMN {ddl}"))
            except DBAPIError:
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
                continue  # another replica added it meanwhile
            added.append(f"{table.name}.{column.name}")
    return added
