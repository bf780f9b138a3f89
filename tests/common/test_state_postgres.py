"""The state store on SQLite and on a real Postgres: clear errors for a URL whose driver is missing,
claims that two replicas never both win, leases that lapse and are taken over, and columns added to
a database an earlier release made."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    inspect,
    select,
)

from tunelab.common.errors import FailedPrecondition, InvalidArgument
from tunelab.common.ownership import Ownership, owner_columns
from tunelab.common.state import add_missing_columns, open_database, serialized


def _work_table(metadata: MetaData) -> Table:
    return Table("work", metadata, Column("id", Integer, primary_key=True), *owner_columns())


@pytest.fixture(params=["sqlite", "postgres"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty state database: a SQLite file, or a database on the Postgres server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def replicas(state_url: str, tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    """``replica()``: a new engine on the one database, as another replica would open it."""
    engines: list[Engine] = []

    def replica() -> Engine:
        metadata = MetaData()
        _work_table(metadata)
        engine = open_database(state_url, tmp_path / "unused.sqlite", metadata)
        engines.append(engine)
        return engine

    yield replica
    for engine in engines:
        engine.dispose()


def test_a_url_whose_driver_is_missing_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as err:
        open_database("postgresql+pg8000://tunelab:s3cret@db:5432/tunelab", tmp_path / "x", MetaData())
    assert (
        "needs the database driver 'pg8000', which is not installed: pip install 'pg8000'"
        in err.value.message
    )
    assert "postgresql+psycopg" in err.value.message and "s3cret" not in err.value.message
    with pytest.raises(InvalidArgument, match="TUNELAB_STATE_URL is not a database URL"):
        open_database("db:5432/tunelab", tmp_path / "x", MetaData())
    with pytest.raises(FailedPrecondition, match=r"cannot use the state database .*:1/tunelab: connection"):
        open_database("postgresql+psycopg://tunelab:s3cret@127.0.0.1:1/tunelab", tmp_path / "x", MetaData())


def test_a_service_with_a_missing_driver_stops_with_the_message(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TUNELAB_DATA_DIR": str(tmp_path / "data"),
        "TUNELAB_PORT": "0",
        "TUNELAB_METRICS_PORT": "0",
        "TUNELAB_STATE_URL": "postgresql+pg8000://tunelab@127.0.0.1:1/tunelab",
    }
    done = subprocess.run(
        [sys.executable, "-m", "tunelab.datasets"], env=env, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "pip install 'pg8000'" in output and "Traceback" not in output


def test_every_row_is_claimed_by_exactly_one_replica(replicas: Callable[[], Engine]) -> None:
    engines = [replicas() for _ in range(4)]
    table = _work_table(MetaData())
    with engines[0].begin() as db:
        db.execute(insert(table), [{"id": i} for i in range(200)])
    won: dict[str, list[int]] = {}
    start = threading.Barrier(len(engines))

    def claim(n: int) -> None:
        me = f"replica-{n}"
        ownership = Ownership(engines[n], table, me, lease_s=60)
        start.wait()
        mine: list[int] = []
        for _ in range(20):
            mine += [row.id for row in ownership.claim_free(table.c.id >= 0, mine=False)]
            mine += [i for i in range(200) if ownership.claim({"id": i}) and i not in mine]
        won[me] = mine

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(engines))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    claimed = [i for ids in won.values() for i in ids]
    assert sorted(claimed) == list(range(200))  # each once, none twice
    with engines[0].connect() as db:
        owners = {row.id: row.owner for row in db.execute(select(table))}
    assert all(owners[i] == me for me, ids in won.items() for i in ids)


def test_a_lapsed_lease_is_taken_over_and_the_old_owner_hears_it(replicas: Callable[[], Engine]) -> None:
    engine_a, engine_b = replicas(), replicas()
    table = _work_table(MetaData())
    with engine_a.begin() as db:
        db.execute(insert(table), [{"id": 1}, {"id": 2}])
    now = [1000.0]
    a = Ownership(engine_a, table, "a", lease_s=30, clock=lambda: now[0])
    b = Ownership(engine_b, table, "b", lease_s=30, clock=lambda: now[0])
    assert a.claim({"id": 1}) and a.claim({"id": 2})
    assert not b.claim({"id": 1}) and b.claim_free(table.c.id > 0) == []
    now[0] += 20
    assert a.renew([{"id": 1}]) == []  # a keeps 1; 2 runs out at 1030
    now[0] += 15
    assert [row.id for row in b.claim_free(table.c.id > 0, mine=False)] == [2]
    assert a.renew([{"id": 1}, {"id": 2}]) == [{"id": 2}]
    a.release({"id": 2})  # no longer a's: b keeps it
    with engine_a.connect() as db:
        assert dict(db.execute(select(table.c.id, table.c.owner)).all()) == {1: "a", 2: "b"}  # type: ignore[arg-type]
    # A replica restarted under its name finds its own work at once.
    assert [row.id for row in a.claim_free(table.c.id > 0, mine=True)] == [1]


def test_serialized_transactions_do_not_lose_updates(replicas: Callable[[], Engine]) -> None:
    engines = [replicas() for _ in range(3)]
    counter = Table("counter", MetaData(), Column("id", Integer, primary_key=True), Column("n", Integer))
    counter.create(engines[0])
    with engines[0].begin() as db:
        db.execute(insert(counter).values(id=1, n=0))

    def add(engine: Engine) -> None:
        for _ in range(30):
            with serialized(engine) as db:
                n = db.execute(select(counter.c.n).where(counter.c.id == 1).with_for_update()).scalar_one()
                db.execute(counter.update().values(n=n + 1))

    threads = [threading.Thread(target=add, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    with engines[0].connect() as db:
        assert db.execute(select(counter.c.n)).scalar_one() == 90


def test_columns_added_after_a_release_reach_an_old_database(state_url: str) -> None:
    old = MetaData()
    Table("work", old, Column("id", Integer, primary_key=True), Column("name", String(10)))
    engine = create_engine(state_url)
    old.create_all(engine)
    with engine.begin() as db:
        db.execute(insert(old.tables["work"]).values(id=1, name="x"))
    new = MetaData()
    Table("work", new, Column("id", Integer, primary_key=True), Column("name", String(10)), *owner_columns())
    Table("extra", new, Column("id", Integer, primary_key=True), Column("note", Text))
    new.create_all(engine)
    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(add_missing_columns(engine, new))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(c for added in results for c in added) == ["work.owned_until", "work.owner"]
    assert {c["name"] for c in inspect(engine).get_columns("work")} == {"id", "name", "owner", "owned_until"}
    with engine.connect() as db:
        assert db.execute(select(new.tables["work"])).one()._mapping["owner"] == ""
    engine.dispose()


@pytest.mark.parametrize("service", ["trainer", "datasets", "environments"])
def test_an_old_sqlite_database_gains_the_owner_columns(service: str, tmp_path: Path) -> None:
    """A service's database from before replicas held work (no owner columns) opens, and its rows
    are takeable: their owner reads as nobody."""
    import importlib
    import sqlite3

    tables = importlib.import_module(f"tunelab.{service}.tables")
    table = {"trainer": "jobs", "datasets": "versions", "environments": "environments"}[service]
    path = tmp_path / "state.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    tables.metadata.create_all(engine)
    engine.dispose()
    with sqlite3.connect(path) as conn:
        for column in ("owner", "owned_until"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")  # as an earlier release made it

    engine = open_database("", path, tables.metadata)
    assert [c for c in tables.upgrade(engine) if c.startswith(f"{table}.")] == [
        f"{table}.owner",
        f"{table}.owned_until",
    ]
    assert {"owner", "owned_until"} <= {c["name"] for c in inspect(engine).get_columns(table)}
    assert tables.upgrade(engine) == []  # the next start finds nothing to add
    engine.dispose()


def test_the_environments_service_upgrades_its_database(tmp_path: Path) -> None:
    """The environments service brings an older database up to its tables at start."""
    import sqlite3

    from tunelab.environments.server import build_store
    from tunelab.environments.settings import EnvironmentSettings
    from tunelab.environments.tables import metadata

    path = tmp_path / "data" / "environments" / "state.sqlite"
    path.parent.mkdir(parents=True)
    engine = create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE environments DROP COLUMN owner")
        conn.execute("ALTER TABLE environments DROP COLUMN owned_until")
    store = build_store(EnvironmentSettings(data_dir=tmp_path / "data", port=0, metrics_port=0))
    try:
        assert store.registry.unfinished() == [] and store.resume_unfinished() == 0
        with sqlite3.connect(path) as conn:
            assert {"owner", "owned_until"} <= {
                row[1] for row in conn.execute("PRAGMA table_info(environments)")
            }
    finally:
        store.close()
