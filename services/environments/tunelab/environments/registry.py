"""Environments and their build logs in the state database.

Every write bumps a change counter and wakes watchers, so ``WatchEnvironment`` streams changes as
they happen (and polls, for when another replica made them).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from tunelab.common.errors import AlreadyExists, NotFound
from tunelab.environments.tables import environments_t, logs_t

TERMINAL = ("READY", "FAILED")


@dataclass
class EnvRecord:
    id: str
    spec: dict[str, Any]
    spec_identity: str
    create_time: float
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    state: str = "PENDING"
    phase: str = ""
    error: str = ""
    env_key: str = ""
    lock: str = ""
    resolved_python: str = ""
    resolved_platform: str = ""
    package_count: int = 0
    cache_hit: bool = False
    ready_time: float | None = None
    last_used_time: float | None = None
    revision: int = 0
    owner: str = ""  # the replica building it (tunelab.common.ownership)
    owned_until: float | None = None

    @property
    def name(self) -> str:
        return f"environments/{self.id}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class LogLine:
    number: int
    time: float
    phase: str
    text: str


JSON_COLUMNS = ("spec", "labels")


def _record(row: Any) -> EnvRecord:
    m = dict(row._mapping)
    for key in JSON_COLUMNS:
        m[key] = json.loads(m[key])
    return EnvRecord(**m)


class Registry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._changed = threading.Condition()

    # -- environments -----------------------------------------------------------------------
    def insert(self, rec: EnvRecord) -> EnvRecord:
        values = {k: (json.dumps(v) if k in JSON_COLUMNS else v) for k, v in vars(rec).items()}
        try:
            with self.engine.begin() as db:
                db.execute(insert(environments_t).values(**values))
        except IntegrityError:
            raise AlreadyExists(f"environment {rec.id!r} exists already") from None
        self._notify()
        return rec

    def get(self, env_id: str) -> EnvRecord:
        with self.engine.connect() as db:
            row = db.execute(select(environments_t).where(environments_t.c.id == env_id)).first()
        if row is None:
            raise NotFound(f"environment {env_id!r} does not exist (see `tunelab env ls`)")
        return _record(row)

    def find(self, env_id: str) -> EnvRecord | None:
        try:
            return self.get(env_id)
        except NotFound:
            return None

    def page(self, before: tuple[float, str] | None, limit: int) -> list[EnvRecord]:
        """Newest first; ``before`` is the (create_time, id) of the last item of the previous page."""
        query = select(environments_t)
        if before is not None:
            t, ident = before
            query = query.where(
                (environments_t.c.create_time < t)
                | ((environments_t.c.create_time == t) & (environments_t.c.id < ident))
            )
        query = query.order_by(environments_t.c.create_time.desc(), environments_t.c.id.desc()).limit(limit)
        with self.engine.connect() as db:
            return [_record(r) for r in db.execute(query)]

    def all(self) -> list[EnvRecord]:
        with self.engine.connect() as db:
            return [_record(r) for r in db.execute(select(environments_t))]

    def update(self, rec: EnvRecord, **changes: Any) -> EnvRecord:
        new = replace(rec, **changes, revision=rec.revision + 1)
        values = {k: (json.dumps(v) if k in JSON_COLUMNS else v) for k, v in changes.items()}
        with self.engine.begin() as db:
            n = db.execute(
                update(environments_t)
                .where(environments_t.c.id == rec.id)
                .values(**values, revision=environments_t.c.revision + 1)
            ).rowcount
        if not n:
            raise NotFound(f"{rec.name} was deleted")
        self._notify()
        return new

    def touch(self, env_id: str) -> None:
        """Records a use (materialize, lease) for least-recently-used collection."""
        with self.engine.begin() as db:
            db.execute(
                update(environments_t).where(environments_t.c.id == env_id).values(last_used_time=time.time())
            )

    def replace_row(self, rec: EnvRecord) -> EnvRecord:
        """Overwrites an environment (``replace``): its log starts again."""
        self.delete(rec.id)
        return self.insert(rec)

    def delete(self, env_id: str) -> None:
        with self.engine.begin() as db:
            db.execute(delete(logs_t).where(logs_t.c.env_id == env_id))
            n = db.execute(delete(environments_t).where(environments_t.c.id == env_id)).rowcount
        if not n:
            raise NotFound(f"environment {env_id!r} does not exist")
        self._notify()

    def unfinished(self) -> list[EnvRecord]:
        with self.engine.connect() as db:
            rows = db.execute(select(environments_t).where(environments_t.c.state.not_in(TERMINAL)))
            return [_record(r) for r in rows]

    # -- logs -------------------------------------------------------------------------------
    def append_logs(self, env_id: str, lines: list[tuple[float, str, str]]) -> None:
        if not lines:
            return
        with self.engine.begin() as db:
            last = db.execute(select(func.max(logs_t.c.line)).where(logs_t.c.env_id == env_id)).scalar() or 0
            db.execute(
                insert(logs_t),
                [
                    {"env_id": env_id, "line": last + i, "time": t, "phase": phase, "text": text}
                    for i, (t, phase, text) in enumerate(lines, 1)
                ],
            )
        self._notify()

    def logs(self, env_id: str, after: int = 0, limit: int = 100_000) -> list[LogLine]:
        with self.engine.connect() as db:
            rows = db.execute(
                select(logs_t)
                .where(logs_t.c.env_id == env_id, logs_t.c.line > after)
                .order_by(logs_t.c.line)
                .limit(limit)
            )
            return [LogLine(r.line, r.time, r.phase, r.text) for r in rows]

    def log_count(self, env_id: str) -> int:
        with self.engine.connect() as db:
            return int(
                db.execute(select(func.max(logs_t.c.line)).where(logs_t.c.env_id == env_id)).scalar() or 0
            )

    # -- watching ---------------------------------------------------------------------------
    def watch(
        self,
        env_id: str,
        after_line: int,
        with_logs: bool,
        active: Callable[[], bool] = lambda: True,
        poll_s: float = 1.0,
    ) -> Iterator[tuple[EnvRecord, list[LogLine]]]:
        """Yields the environment now and on every change with the log lines since the last yield,
        until it is READY or FAILED (the remaining lines are sent first) or ``active()`` turns false
        (checked at least every ``poll_s``: a watcher that went away frees its thread)."""
        last_revision = -1
        while active():
            with self._changed:
                rec = self.get(env_id)
                lines = self.logs(env_id, after_line) if with_logs else []
                if rec.revision == last_revision and not lines:
                    self._changed.wait(poll_s)
                    continue
            last_revision = rec.revision
            if lines:
                after_line = lines[-1].number
            yield rec, lines
            if rec.terminal:
                return

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()
