"""The datasets service's state: datasets, versions, in-flight uploads and the blob index.

Every write bumps a change counter and wakes watchers, so ``WatchDatasetVersion`` streams changes
as they happen (and polls, for when another replica made them).
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
from tunelab.common.names import did_you_mean
from tunelab.datasets.tables import blobs_t, datasets_t, uploads_t, versions_t


class VersionDeleted(NotFound):
    """The version was deleted while work on it was under way."""


STATES = ("PENDING", "FETCHING", "UPLOADING", "VERIFYING", "READY", "FAILED")
TERMINAL = ("READY", "FAILED")


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    description: str
    source: dict[str, Any]
    labels: dict[str, str]
    create_time: float
    latest_version: int | None = None
    version_count: int = 0
    display_name: str = ""  # the spelling it was created with; "" or the id when it is the id


@dataclass(frozen=True)
class VersionRecord:
    dataset_id: str
    number: int
    state: str
    create_time: float
    error: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    file_count: int = 0
    size_bytes: int = 0
    manifest_digest: str = ""
    provenance: dict[str, str] = field(default_factory=dict)
    ready_time: float | None = None
    revision: int = 0

    @property
    def name(self) -> str:
        return f"datasets/{self.dataset_id}/versions/{self.number}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def _version(row: Any) -> VersionRecord:
    m = row._mapping
    return VersionRecord(
        dataset_id=m["dataset_id"],
        number=m["number"],
        state=m["state"],
        create_time=m["create_time"],
        error=m["error"],
        progress=json.loads(m["progress"]),
        file_count=m["file_count"],
        size_bytes=m["size_bytes"],
        manifest_digest=m["manifest_digest"],
        provenance=json.loads(m["provenance"]),
        ready_time=m["ready_time"],
        revision=m["revision"],
    )


class Registry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._changed = threading.Condition()

    # -- datasets ---------------------------------------------------------------------------
    def create_dataset(self, rec: DatasetRecord) -> DatasetRecord:
        try:
            with self.engine.begin() as db:
                db.execute(
                    insert(datasets_t).values(
                        id=rec.id,
                        description=rec.description,
                        source=json.dumps(rec.source),
                        labels=json.dumps(rec.labels),
                        create_time=rec.create_time,
                        next_version=1,
                        display_name=rec.display_name if rec.display_name != rec.id else "",
                    )
                )
        except IntegrityError:
            raise AlreadyExists(
                f"dataset {rec.id!r} exists already: sync it for a new version, or pick another name"
            ) from None
        return rec

    def get_dataset(self, dataset_id: str) -> DatasetRecord:
        with self.engine.connect() as db:
            row = db.execute(select(datasets_t).where(datasets_t.c.id == dataset_id)).first()
            if row is None:
                raise self._missing(db, dataset_id)
            return self._dataset(db, row)

    def _missing(self, db: Any, dataset_id: str) -> NotFound:
        """NotFound for ``dataset_id``, with the closest existing names when there are some."""
        known = [r[0] for r in db.execute(select(datasets_t.c.id))]
        return NotFound(
            f"dataset {dataset_id!r} does not exist{did_you_mean(dataset_id, known)} "
            "(see `tunelab dataset ls`)"
        )

    def _dataset(self, db: Any, row: Any) -> DatasetRecord:
        m = row._mapping
        latest = db.execute(
            select(func.max(versions_t.c.number)).where(
                versions_t.c.dataset_id == m["id"], versions_t.c.state == "READY"
            )
        ).scalar()
        count = db.execute(
            select(func.count()).select_from(versions_t).where(versions_t.c.dataset_id == m["id"])
        ).scalar()
        return DatasetRecord(
            id=m["id"],
            description=m["description"],
            source=json.loads(m["source"]),
            labels=json.loads(m["labels"]),
            create_time=m["create_time"],
            latest_version=latest,
            version_count=int(count or 0),
            display_name=m["display_name"] or m["id"],
        )

    def list_datasets(self, after: str, limit: int) -> list[DatasetRecord]:
        with self.engine.connect() as db:
            rows = db.execute(
                select(datasets_t).where(datasets_t.c.id > after).order_by(datasets_t.c.id).limit(limit)
            ).all()
            return [self._dataset(db, r) for r in rows]

    def delete_dataset(self, dataset_id: str) -> list[int]:
        """Deletes the dataset's rows; returns its version numbers (their manifests go too)."""
        with self.engine.begin() as db:
            numbers = [
                r[0]
                for r in db.execute(select(versions_t.c.number).where(versions_t.c.dataset_id == dataset_id))
            ]
            db.execute(delete(uploads_t).where(uploads_t.c.dataset_id == dataset_id))
            db.execute(delete(versions_t).where(versions_t.c.dataset_id == dataset_id))
            gone = db.execute(delete(datasets_t).where(datasets_t.c.id == dataset_id)).rowcount
            if not gone:
                raise self._missing(db, dataset_id)
        self._notify()
        return numbers

    def drop_stillborn(self, dataset_id: str) -> list[int] | None:
        """Deletes the dataset when it never had a version that did not fail (it has versions, all
        FAILED: its source was refused, its upload broke off); returns their numbers. None, and
        nothing changes, for any other dataset."""
        with self.engine.begin() as db:
            rows = db.execute(
                select(versions_t.c.number, versions_t.c.state)
                .where(versions_t.c.dataset_id == dataset_id)
                .with_for_update()
            ).all()
            if not rows or any(state != "FAILED" for _, state in rows):
                return None
            numbers = [number for number, _ in rows]
            db.execute(delete(uploads_t).where(uploads_t.c.dataset_id == dataset_id))
            db.execute(delete(versions_t).where(versions_t.c.dataset_id == dataset_id))
            db.execute(delete(datasets_t).where(datasets_t.c.id == dataset_id))
        self._notify()
        return numbers

    # -- versions ---------------------------------------------------------------------------
    def new_version(
        self, dataset_id: str, state: str, provenance: dict[str, str] | None = None
    ) -> VersionRecord:
        now = time.time()
        with self.engine.begin() as db:
            number = db.execute(
                select(datasets_t.c.next_version).where(datasets_t.c.id == dataset_id).with_for_update()
            ).scalar()
            if number is None:
                raise self._missing(db, dataset_id)
            db.execute(
                update(datasets_t).where(datasets_t.c.id == dataset_id).values(next_version=number + 1)
            )
            db.execute(
                insert(versions_t).values(
                    dataset_id=dataset_id,
                    number=number,
                    state=state,
                    error="",
                    progress="{}",
                    provenance=json.dumps(provenance or {}),
                    create_time=now,
                    revision=0,
                )
            )
        self._notify()
        return VersionRecord(dataset_id, number, state, now, provenance=provenance or {})

    def get_version(self, dataset_id: str, number: int | None) -> VersionRecord:
        """``number=None`` means the newest READY version."""
        with self.engine.connect() as db:
            q = select(versions_t).where(versions_t.c.dataset_id == dataset_id)
            if number is None:
                q = q.where(versions_t.c.state == "READY").order_by(versions_t.c.number.desc()).limit(1)
            else:
                q = q.where(versions_t.c.number == number)
            row = db.execute(q).first()
        if row is None:
            self.get_dataset(dataset_id)  # raises NotFound naming the dataset when that is what's missing
            if number is None:
                raise NotFound(f"dataset {dataset_id!r} has no READY version yet")
            raise NotFound(f"dataset {dataset_id!r} has no version {number}")
        return _version(row)

    def list_versions(self, dataset_id: str, after: int, limit: int) -> list[VersionRecord]:
        self.get_dataset(dataset_id)
        with self.engine.connect() as db:
            rows = db.execute(
                select(versions_t)
                .where(versions_t.c.dataset_id == dataset_id, versions_t.c.number > after)
                .order_by(versions_t.c.number)
                .limit(limit)
            ).all()
        return [_version(r) for r in rows]

    def unfinished_versions(self) -> list[VersionRecord]:
        with self.engine.connect() as db:
            rows = db.execute(select(versions_t).where(versions_t.c.state.not_in(TERMINAL))).all()
        return [_version(r) for r in rows]

    def ready_versions(self) -> list[VersionRecord]:
        with self.engine.connect() as db:
            rows = db.execute(select(versions_t).where(versions_t.c.state == "READY")).all()
        return [_version(r) for r in rows]

    def update_version(self, rec: VersionRecord, **changes: Any) -> VersionRecord:
        new = replace(rec, **changes, revision=rec.revision + 1)
        values = {k: (json.dumps(v) if k in ("progress", "provenance") else v) for k, v in changes.items()}
        with self.engine.begin() as db:
            n = db.execute(
                update(versions_t)
                .where(versions_t.c.dataset_id == rec.dataset_id, versions_t.c.number == rec.number)
                .values(**values, revision=versions_t.c.revision + 1)
            ).rowcount
        if not n:
            raise VersionDeleted(f"{rec.name} was deleted")
        self._notify()
        return new

    def fail_version(self, rec: VersionRecord, reason: str) -> bool:
        """Marks the version FAILED with ``reason`` and drops its in-flight upload (so its blobs are
        no longer pinned), unless it finished meanwhile; returns whether it did."""
        with self.engine.begin() as db:
            n = db.execute(
                update(versions_t)
                .where(
                    versions_t.c.dataset_id == rec.dataset_id,
                    versions_t.c.number == rec.number,
                    versions_t.c.state.not_in(TERMINAL),
                )
                .values(state="FAILED", error=reason, revision=versions_t.c.revision + 1)
            ).rowcount
            db.execute(
                delete(uploads_t).where(
                    uploads_t.c.dataset_id == rec.dataset_id, uploads_t.c.number == rec.number
                )
            )
        self._notify()
        return bool(n)

    def delete_version(self, dataset_id: str, number: int) -> None:
        with self.engine.begin() as db:
            db.execute(
                delete(uploads_t).where(uploads_t.c.dataset_id == dataset_id, uploads_t.c.number == number)
            )
            n = db.execute(
                delete(versions_t).where(versions_t.c.dataset_id == dataset_id, versions_t.c.number == number)
            ).rowcount
        if not n:
            raise NotFound(f"dataset {dataset_id!r} has no version {number}")
        self._notify()

    def watch(
        self, dataset_id: str, number: int, active: Callable[[], bool] = lambda: True, poll_s: float = 1.0
    ) -> Iterator[VersionRecord]:
        """Yields the version now and on every change, until it is terminal or ``active()`` turns
        false (checked at least every ``poll_s``: a watcher that went away frees its thread)."""
        last = -1
        while active():
            with self._changed:
                rec = self.get_version(dataset_id, number)
                if rec.revision == last:
                    self._changed.wait(poll_s)
                    continue
            last = rec.revision
            yield rec
            if rec.terminal:
                return

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- uploads ----------------------------------------------------------------------------
    def save_upload(self, dataset_id: str, number: int, manifest_json: str) -> None:
        with self.engine.begin() as db:
            db.execute(insert(uploads_t).values(dataset_id=dataset_id, number=number, manifest=manifest_json))

    def get_upload(self, dataset_id: str, number: int) -> str | None:
        with self.engine.connect() as db:
            return db.execute(
                select(uploads_t.c.manifest).where(
                    uploads_t.c.dataset_id == dataset_id, uploads_t.c.number == number
                )
            ).scalar()

    def pending_upload_manifests(self) -> list[str]:
        with self.engine.connect() as db:
            return [r[0] for r in db.execute(select(uploads_t.c.manifest))]

    def uploads_with_blob(self, sha256: str) -> list[VersionRecord]:
        """The versions being uploaded whose files include the blob ``sha256``."""
        with self.engine.connect() as db:
            rows = db.execute(
                select(versions_t)
                .join(
                    uploads_t,
                    (uploads_t.c.dataset_id == versions_t.c.dataset_id)
                    & (uploads_t.c.number == versions_t.c.number),
                )
                .where(uploads_t.c.manifest.contains(f'"{sha256}"', autoescape=True))
            ).all()
        return [_version(r) for r in rows]

    def drop_upload(self, dataset_id: str, number: int) -> None:
        with self.engine.begin() as db:
            db.execute(
                delete(uploads_t).where(uploads_t.c.dataset_id == dataset_id, uploads_t.c.number == number)
            )

    # -- blob index -------------------------------------------------------------------------
    def known_blobs(self, hashes: list[str]) -> set[str]:
        found: set[str] = set()
        with self.engine.connect() as db:
            for i in range(0, len(hashes), 500):
                part = hashes[i : i + 500]
                found.update(
                    r[0] for r in db.execute(select(blobs_t.c.sha256).where(blobs_t.c.sha256.in_(part)))
                )
        return found

    def add_blobs(self, blobs: dict[str, int]) -> None:
        if not blobs:
            return
        with self.engine.begin() as db:
            known: set[str] = set()
            keys = list(blobs)
            for i in range(0, len(keys), 500):
                part = keys[i : i + 500]
                known.update(
                    r[0] for r in db.execute(select(blobs_t.c.sha256).where(blobs_t.c.sha256.in_(part)))
                )
            fresh = [{"sha256": k, "size": v, "verified": True} for k, v in blobs.items() if k not in known]
            if fresh:
                try:
                    with db.begin_nested():
                        db.execute(insert(blobs_t), fresh)
                except IntegrityError:  # another thread indexed some of them meanwhile
                    for row in fresh:
                        try:
                            with db.begin_nested():
                                db.execute(insert(blobs_t), [row])
                        except IntegrityError:
                            pass

    def forget_blobs(self, hashes: list[str]) -> None:
        with self.engine.begin() as db:
            for i in range(0, len(hashes), 500):
                db.execute(delete(blobs_t).where(blobs_t.c.sha256.in_(hashes[i : i + 500])))
