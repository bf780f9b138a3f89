"""The state store: SQLAlchemy Core on SQLite by default (WAL, one file per service); a
``TUNELAB_STATE_URL`` pointing at Postgres (``postgresql+psycopg://…``) takes over when a service
runs replicas. Work the replicas share is claimed in the database (``serialized`` transactions and
row locks, see ``tunelab.common.ownership``), never under a lock of one process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, ProgrammingError

from tunelab.common.errors import FailedPrecondition, InvalidArgument

# What to install for the driver a URL names (its ``+driver`` part, or its database's default).
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "asyncpg": "asyncpg"}


def open_database(url: str, default_path: Path, metadata: MetaData) -> Engine:
    """Opens (and creates the tables of) the state database at ``url`` or at ``default_path``."""
    if not url:
        default_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{default_path}"
    engine = _engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    try:
        _create_tables(engine, metadata)
    except DBAPIError as exc:
        shown = engine.url.render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise FailedPrecondition(
            f"TUNELAB_STATE_URL: cannot use the state database {shown}: {reason}"
        ) from None
    return engine


def _create_tables(engine: Engine, metadata: MetaData) -> None:
    """Creates the tables a database lacks. Replicas starting together on an empty database race to
    create them; the loser finds them made on its second look."""
    for attempt in range(3):
        try:
            metadata.create_all(engine)
            return
        except (IntegrityError, ProgrammingError):
            if attempt == 2:
                raise
            time.sleep(0.5)


def _engine(url: str) -> Engine:
    """The engine of ``url``, or an error saying which setting is wrong and what to install."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidArgument(
            "TUNELAB_STATE_URL is not a database URL: use e.g. "
            "postgresql+psycopg://user:password@host:5432/tunelab (empty: SQLite in the data directory)"
        ) from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        return create_engine(parsed, future=True, pool_pre_ping=True)
    except NoSuchModuleError:
        raise InvalidArgument(
            f"TUNELAB_STATE_URL {shown}: {parsed.drivername!r} is not a database this service knows; "
            "use postgresql+psycopg://… or sqlite:///…"
        ) from None
    except ImportError as exc:
        driver = parsed.get_driver_name()
        package = DRIVER_PACKAGES.get(driver, exc.name or driver)
        hint = (
            " (or use postgresql+psycopg://…, whose driver the service images include)"
            if (parsed.get_backend_name() == "postgresql" and driver != "psycopg")
            else ""
        )
        raise FailedPrecondition(
            f"TUNELAB_STATE_URL {shown} needs the database driver {driver!r}, which is not installed: "
            f"pip install '{package}'{hint}"
        ) from None


@contextmanager
def serialized(engine: Engine) -> Iterator[Connection]:
    """A write transaction for a check-then-change that replicas must not interleave.

    On Postgres the caller's row locks (``SELECT … FOR UPDATE``) do the serializing; on SQLite,
    which ignores those, ``BEGIN IMMEDIATE`` takes the database's write lock before the first read,
    so the whole transaction runs alone (other writers wait up to the busy timeout)."""
    with engine.begin() as db:
        if engine.dialect.name == "sqlite":
            db.exec_driver_sql("BEGIN IMMEDIATE")
        yield db


def add_missing_columns(engine: Engine, metadata: MetaData) -> list[str]:
    """Adds the columns ``metadata`` declares that an existing database lacks (a database made by an
    earlier release); returns them as ``table.column``. Each such column needs a server default or
    must be nullable. Replicas starting together are fine: a column another one added is skipped."""
    from sqlalchemy import inspect, text
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
