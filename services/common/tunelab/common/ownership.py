"""Which replica runs which piece of in-flight work (a job, a dataset sync, an environment build).

Replicas of a service share its state database. The replica that takes a piece of work writes its
name into the work's row (``owner``) with an expiry (``owned_until``) and renews that while the work
runs. Work whose owner stopped renewing (its replica died) is takeable again, and another replica
takes it over. A replica that restarts under the same name (TUNELAB_REPLICA_ID; by default
``hostname:data_dir``) finds its own work at once instead of waiting for the lease to lapse.

Every claim is one conditional UPDATE, or a ``SELECT … FOR UPDATE SKIP LOCKED`` and its UPDATEs in
one transaction: two replicas never both take the same work, and neither waits on the other's rows.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Column, ColumnElement, Engine, Float, Row, Table, Text, and_, or_, select, update

from tunelab.common.state import serialized

log = logging.getLogger(__name__)

Key = Mapping[str, Any]  # a row's primary key, column name → value


def owner_columns() -> list[Column[Any]]:
    """The two columns of a table whose rows are work replicas take (databases made before they
    existed gain them at start: both have server defaults or are nullable)."""
    return [
        Column("owner", Text, nullable=False, default="", server_default=""),
        Column("owned_until", Float, nullable=True),
    ]


def replica_name(configured: str, data_dir: Path) -> str:
    """This replica's name: TUNELAB_REPLICA_ID, else ``hostname:data_dir``, which a restart keeps and
    which differs between replicas (two processes on one host sharing a data directory would
    trample each other's staging anyway)."""
    return configured or f"{socket.gethostname()}:{data_dir.resolve()}"


class Ownership:
    """Claims, renewals and releases of the rows of ``table`` by the replica ``me``."""

    def __init__(
        self, engine: Engine, table: Table, me: str, lease_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.engine, self.table, self.me, self.lease_s, self.clock = engine, table, me, lease_s, clock
        self._key_columns = [c.name for c in table.primary_key.columns]

    def key_of(self, row: Row[Any]) -> dict[str, Any]:
        return {name: row._mapping[name] for name in self._key_columns}

    def _match(self, key: Key) -> ColumnElement[bool]:
        return and_(*(self.table.c[name] == value for name, value in key.items()))

    def takeable(self, now: float, mine: bool = True) -> ColumnElement[bool]:
        """Rows nobody holds: no owner, or a lease that lapsed (and, with ``mine``, this replica's
        own, as a restarted replica finds them)."""
        c = self.table.c
        free = or_(c.owner == "", c.owned_until.is_(None), c.owned_until < now)
        return or_(free, c.owner == self.me) if mine else and_(free, c.owner != self.me)

    def held(self) -> dict[str, Any]:
        """The values that mark a row as this replica's until the lease lapses."""
        return {"owner": self.me, "owned_until": self.clock() + self.lease_s}

    def claim(self, key: Key) -> bool:
        """Takes the row ``key`` when it is takeable; False when another replica holds it."""
        now = self.clock()
        with self.engine.begin() as db:
            n = db.execute(
                update(self.table).where(self._match(key), self.takeable(now)).values(**self.held())
            ).rowcount
        return n == 1

    def claim_free(self, where: ColumnElement[bool], mine: bool = True) -> list[Row[Any]]:
        """Takes every takeable row matching ``where``; returns them as they were before. Rows
        another replica is claiming at this moment are skipped (SKIP LOCKED), not waited for."""
        now = self.clock()
        candidates = select(self.table).where(where, self.takeable(now, mine))
        with self.engine.connect() as db:  # the usual answer, "none", without taking a write lock
            if db.execute(candidates.limit(1)).first() is None:
                return []
        query = candidates.with_for_update(skip_locked=True)
        with serialized(self.engine) as db:
            rows = db.execute(query).all()
            for row in rows:
                db.execute(update(self.table).where(self._match(self.key_of(row))).values(**self.held()))
        return list(rows)

    def renew(self, keys: Sequence[Key]) -> list[Key]:
        """Extends the leases of ``keys``; returns those this replica no longer holds."""
        lost: list[Key] = []
        if not keys:
            return lost
        until = self.clock() + self.lease_s
        with self.engine.begin() as db:
            for key in keys:
                mine = and_(self._match(key), self.table.c.owner == self.me)
                if not db.execute(update(self.table).where(mine).values(owned_until=until)).rowcount:
                    lost.append(key)
        for key in lost:
            log.warning("another replica took over work of this one", extra={"work": dict(key)})
        return lost

    def renew_where(self, where: ColumnElement[bool]) -> int:
        """Extends the leases of every row of this replica's matching ``where``."""
        until = self.clock() + self.lease_s
        with self.engine.begin() as db:
            mine = and_(where, self.table.c.owner == self.me)
            return int(db.execute(update(self.table).where(mine).values(owned_until=until)).rowcount)

    def release(self, key: Key) -> None:
        """Gives the row up (the work ended), if this replica still holds it."""
        with self.engine.begin() as db:
            db.execute(
                update(self.table)
                .where(self._match(key), self.table.c.owner == self.me)
                .values(owner="", owned_until=None)
            )


class Keeper:
    """A thread that renews this replica's leases and takes over work whose leases lapsed, every
    third of the lease (so a renewal may be missed twice before the lease runs out)."""

    def __init__(self, name: str, lease_s: float, beat: Callable[[], object]) -> None:
        self.name, self.period_s, self.beat = name, lease_s / 3, beat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def start(self) -> None:
        """Starts the thread (once; later calls do nothing)."""
        with self._starting:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.beat()
            except Exception:  # the next beat tries again; the lease has slack for it
                log.exception("renewing leases failed; trying again")
